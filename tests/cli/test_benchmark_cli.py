"""``mtlkit benchmark`` end to end (real ``mtlkit train`` subprocesses), resume, compare, errors.

One tiny benchmark (2 archs x 2 seeds, 2 tasks, 2 steps on 64x80 images: 8 runs, 2 at a time)
is shared by the tests of this module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from mtlkit.engine.bench_runner import cpu_count

runner = CliRunner()
JOBS = min(2, cpu_count())


def _run(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _bench_args(h5: Path, out: Path, **over: object) -> list[object]:
    opts = {"--archs": "baseline,tpim", "--seeds": "0,1", "--steps": 2, "--data": h5,
            "--size": "64x80", "--tasks": "semseg,depth", "--batch-size": 4, "--jobs": JOBS,
            "--out": out}
    opts.update(over)
    return ["benchmark", *[x for kv in opts.items() for x in kv]]


@pytest.fixture(scope="module")
def bench(tiny_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    res = _run(*_bench_args(tiny_h5, out))
    assert res.exit_code == 0, res.output
    assert "| baseline |" in res.output and "| single (x2) |" in res.output
    return out


def test_benchmark_end_to_end(bench: Path) -> None:
    names = ["single-semseg-s0", "single-depth-s0", "baseline-s0", "tpim-s0",
             "single-semseg-s1", "single-depth-s1", "baseline-s1", "tpim-s1"]
    manifest = json.loads((bench / "benchmark.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == names
    for r in manifest["runs"]:
        run = bench / "runs" / r["name"]
        report = json.loads((run / "report.json").read_text())
        assert report["steps"] == 2 and report["tasks"] == r["tasks"]
        assert report["infer_images_per_s"] > 0 and report["peak_memory_mib"] > 0
        assert report["peak_memory_kind"] == "cpu_peak_rss"
        assert (run / "config.yaml").is_file() and (bench / "logs" / f"{r['name']}.log").is_file()
        assert r["command"].startswith("mtlkit train --arch ") and "--seed" in r["argv"]
    table = json.loads((bench / "table.json").read_text())
    assert [row["arch"] for row in table["rows"]] == ["single", "baseline", "tpim"]
    for row in table["rows"][1:]:
        dm = row["delta_m"]
        assert dm["n"] == 2 and len(dm["per_seed"]) == 2 and dm["ci_low"] <= dm["mean"]
        assert row["gflops"] > 0 and row["peak_memory_mib"]["mean"] > 0
    assert table["saliency_metric"] == "maxF"
    md = (bench / "table.md").read_text()
    assert md.startswith("`mtlkit benchmark --archs baseline,tpim --seeds 0,1 --steps 2")
    assert (bench / "table.png").stat().st_size > 1000
    launches = [json.loads(x) for x in (bench / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 8 and all(x["ok"] and x["threads"] >= 1 and x["jobs"] == JOBS
                                      for x in launches)
    assert f"{JOBS} run(s) at a time" in md


def test_rerun_after_a_kill_resumes_only_unfinished_runs(bench: Path, tiny_h5: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(bench, out)
    runs = out / "runs"
    (runs / "tpim-s1" / "report.json").unlink()  # killed after its last checkpoint
    for f in ("last.pt", "best.pt", "report.json"):  # killed before its first checkpoint
        (runs / "baseline-s0" / f).unlink(missing_ok=True)
    before = len((out / "launches.jsonl").read_text().splitlines())
    res = _run(*_bench_args(tiny_h5, out))
    assert res.exit_code == 0, res.output
    assert "6 finished, 1 to resume, 1 to start" in res.output
    new = [json.loads(x) for x in (out / "launches.jsonl").read_text().splitlines()[before:]]
    assert sorted((x["run"], x["mode"]) for x in new) == [("baseline-s0", "fresh"),
                                                           ("tpim-s1", "resume")]
    assert json.loads((runs / "tpim-s1" / "report.json").read_text())["steps"] == 2
    # the finished runs were not touched
    assert (runs / "tpim-s0" / "report.json").read_bytes() == (
        bench / "runs" / "tpim-s0" / "report.json").read_bytes()


def test_compare_prints_the_benchmark_table(bench: Path, tmp_path: Path) -> None:
    res = _run("compare", bench)
    assert res.exit_code == 0, res.output
    assert "| tpim |" in res.output and "delta_m 95 % CI" in res.output
    md = tmp_path / "t.md"
    res = _run("compare", bench, "--markdown", md)
    assert res.exit_code == 0 and md.read_text() == (bench / "table.md").read_text()
    res = _run("compare", bench, bench / "runs" / "tpim-s0")
    assert res.exit_code == 2 and "benchmark directory" in res.output


@pytest.mark.parametrize(("over", "message"), [
    ({"--archs": "baseline,nope"}, "unknown arch 'nope'"),
    ({"--seeds": "0,0"}, "seed 0 is given twice"),
    ({"--seeds": "0,x"}, "'x' is not an integer"),
    ({"--jobs": 0}, "--jobs 0"),
    ({"--saliency-metric": "AP"}, "saliency-metric"),
    ({"--tasks": "semseg"}, "two tasks"),
    ({"--size": "64by80"}, "bad size"),
])
def test_bad_input_is_one_line(over: dict, message: str, tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    res = _run(*_bench_args(tiny_h5, out, **over))
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


def test_out_of_another_benchmark_is_refused(bench: Path, tiny_h5: Path) -> None:
    before = (bench / "benchmark.json").read_text()
    res = _run(*_bench_args(tiny_h5, bench, **{"--steps": 3}))
    assert res.exit_code == 2, res.output
    assert "holds another benchmark (steps 2 -> 3)" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert (bench / "benchmark.json").read_text() == before


def test_failed_run_exits_nonzero_with_its_log(tiny_h5: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails is named with its log path; the others are kept; exit status 1."""
    import subprocess
    import sys

    from mtlkit.engine import bench_runner

    def launch(argv: list[str], env: dict, log: object) -> subprocess.Popen:
        if "tpim-s1" in argv[argv.index("--out") + 1]:
            argv = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
        else:  # a finished run in no time
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True)
            metrics = {t: {"mIoU": 50.0, "rmse": 1.0} for t in ("semseg", "depth")}
            (out / "report.json").write_text(json.dumps({"steps": 2, "metrics": metrics}))
            argv = [sys.executable, "-c", "pass"]
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    monkeypatch.setattr(bench_runner, "_popen", launch)
    out = tmp_path / "b"
    res = _run(*_bench_args(tiny_h5, out))
    assert res.exit_code == 1, res.output
    log = out / "logs" / "tpim-s1.log"
    assert f"run tpim-s1 failed (exit status 3: boom); log: {log}" in res.output
    assert "boom" in log.read_text() and not (out / "table.md").exists()
    assert (out / "runs" / "tpim-s0" / "report.json").is_file()
