"""The benchmark library: plan, presets, manifest, resume states, scheduling and the table.

Runs are not trained here: a fake launcher writes the reports a ``mtlkit train`` would (the real
subprocesses run in tests/cli/test_benchmark_cli.py). The statistics are checked against values
worked out by hand from scripted reports.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from mtlkit.engine import bench_runner
from mtlkit.engine.bench_plan import (
    BenchmarkSettings,
    build_manifest,
    check_manifest,
    find_preset,
    parse_archs,
    parse_seeds,
    plan_runs,
    resolve_settings,
)
from mtlkit.engine.bench_runner import make_slots, run_state, subprocess_env
from mtlkit.engine.bench_table import build_table, table_markdown, write_table
from mtlkit.engine.benchmark import run_benchmark
from mtlkit.errors import ConfigError, DataError, MtlkitError
from mtlkit.utils import atomic_write_json

T975_2 = 4.3027  # Student's t, 0.975 quantile, 2 degrees of freedom (printed tables)


def _settings(h5: Path, **kw: Any) -> BenchmarkSettings:
    base = dict(archs=["baseline", "tpim"], seeds=[0, 1], steps=4, data=str(h5),
                tasks=["semseg", "depth"], size=[64, 80], batch_size=4)
    base.update(kw)
    return resolve_settings(BenchmarkSettings(**base))


def _write_manifest(s: BenchmarkSettings, out: Path) -> list:
    runs = plan_runs(s, out)
    atomic_write_json(out / "benchmark.json", build_manifest(s, runs, out))
    return runs


def _report(run_dir: Path, steps: int, metrics: dict, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "report.json", {
        "arch": "x", "steps": steps, "params": 1_000_000, "images_per_s": 5.0,
        "infer_images_per_s": 50.0, "peak_memory_mib": 900.0,
        "peak_memory_kind": "cpu_peak_rss", "metrics": metrics, **extra})


# --------------------------------------------------------------------------- parsing
def test_parse_seeds() -> None:
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad, msg in [("0,0", "given twice"), ("0,a", "not an integer"), ("1.5", "not an integer"),
                     ("", "no seed"), ("-1", "negative")]:
        with pytest.raises(ConfigError, match=msg):
            parse_seeds(bad)


def test_parse_archs() -> None:
    assert parse_archs("baseline,tpim") == ["baseline", "tpim"]
    with pytest.raises(MtlkitError, match="unknown arch 'nope'"):
        parse_archs("baseline,nope")
    with pytest.raises(ConfigError, match="given twice"):
        parse_archs("tpim,tpim")
    with pytest.raises(ConfigError, match="single"):
        parse_archs("single,tpim")


@pytest.mark.parametrize(("kw", "msg"), [
    ({"steps": 0}, "--steps"), ({"jobs": 0}, "--jobs"), ({"tasks": ["semseg"]}, "two tasks"),
    ({"tasks": ["semseg", "nope"]}, "nope"), ({"saliency_metric": "AP"}, "saliency"),
    ({"backbone": "nope"}, "backbone"), ({"data": "/nonexistent.h5"}, "not found"),
    ({"config_dir": "/nonexistent"}, "--config-dir"), ({"batch_size": 0}, "--batch-size"),
])
def test_bad_settings(tiny_h5: Path, kw: dict, msg: str) -> None:
    with pytest.raises(MtlkitError, match=msg):
        _settings(tiny_h5, **kw)


def test_real_dataset_needs_data() -> None:
    with pytest.raises(ConfigError, match="needs --data"):
        resolve_settings(BenchmarkSettings(archs=["baseline"], seeds=[0], dataset="nyud"))


# --------------------------------------------------------------------------- plan and presets
def test_plan_is_fair(tiny_h5: Path, tmp_path: Path) -> None:
    s = _settings(tiny_h5)
    runs = plan_runs(s, tmp_path / "b")
    names = [r.name for r in runs]
    assert names == ["single-semseg-s0", "single-depth-s0", "baseline-s0", "tpim-s0",
                     "single-semseg-s1", "single-depth-s1", "baseline-s1", "tpim-s1"]
    for r in runs:
        a = r.argv
        assert a[1:4] == ["-m", "cli.main", "train"]
        val = {a[i]: a[i + 1] for i in range(4, len(a) - 1) if a[i].startswith("--")}
        assert val["--data"] == str(tiny_h5) and val["--size"] == "64x80"
        assert val["--steps"] == "4" and val["--seed"] == str(r.seed)
        assert val["--batch-size"] == "4" and val["--backbone"] == "tiny"
        assert val["--eval-every"] == "0" and val["--tasks"] == ",".join(r.tasks)
        assert val["--out"] == str(tmp_path / "b" / "runs" / r.name)
        assert "--quiet" in a and "--no-amp" in a
        assert r.command.startswith("mtlkit train --arch ")
    assert [r.tasks for r in runs if r.reference][:2] == [["semseg"], ["depth"]]


def _preset(path: Path, arch: str, dataset: str = "synthetic-nyud", backbone: str = "tiny",
            extra: str = "") -> Path:
    path.write_text(f"data:\n  dataset: {dataset}\n  size: [32, 32]\nmodel:\n  arch: {arch}\n"
                    f"  backbone: {backbone}\n{extra}train:\n  steps: 999\n  lr: 0.0005\n")
    return path


def test_preset_rule(tiny_h5: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "configs"
    cfg.mkdir()
    hit = _preset(cfg / "tpim_synthetic_tiny.yaml", "tpim")
    _preset(cfg / "tpim_nyud_hrnet18.yaml", "tpim", "nyud", "timm:hrnet_w18_small_v2")
    _preset(cfg / "baseline_synthetic_tiny.yaml", "baseline", backbone="timm:resnet50")
    assert find_preset(cfg, "tpim", "synthetic-nyud", "tiny") == hit
    assert find_preset(cfg, "baseline", "synthetic-nyud", "tiny") is None
    assert find_preset(None, "tpim", "synthetic-nyud", "tiny") is None
    s = _settings(tiny_h5, config_dir=str(cfg))
    runs = {r.name: r for r in plan_runs(s, tmp_path / "b")}
    argv = runs["tpim-s0"].argv
    assert argv[argv.index("--config") + 1] == str(hit)
    # the preset's steps and size are overridden on the command line
    assert argv[argv.index("--steps") + 1] == "4" and argv[argv.index("--size") + 1] == "64x80"
    assert "--config" not in runs["baseline-s0"].argv
    _preset(cfg / "tpim_other.yaml", "tpim")
    with pytest.raises(ConfigError, match="two presets"):
        find_preset(cfg, "tpim", "synthetic-nyud", "tiny")


def test_preset_with_pretrained_weights_is_refused(tmp_path: Path) -> None:
    _preset(tmp_path / "tif_x.yaml", "tif", extra="  pretrained: w.pth\n")
    with pytest.raises(ConfigError, match="pretrained"):
        find_preset(tmp_path, "tif", "synthetic-nyud", "tiny")


def test_shipped_presets_are_found() -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    assert find_preset(configs, "bfci", "synthetic-nyud", "tiny").name == "bfci_synthetic_tiny.yaml"
    assert find_preset(configs, "tpim", "synthetic-nyud", "tiny") is None


def test_manifest_identity(tiny_h5: Path, tmp_path: Path) -> None:
    s = _settings(tiny_h5)
    m = build_manifest(s, plan_runs(s, tmp_path), tmp_path)
    check_manifest(m, build_manifest(s, plan_runs(s, tmp_path), tmp_path), tmp_path)
    s2 = _settings(tiny_h5, jobs=2, saliency_metric="mIoU")  # not part of the identity
    check_manifest(m, build_manifest(s2, plan_runs(s2, tmp_path), tmp_path), tmp_path)
    s3 = _settings(tiny_h5, steps=5)
    with pytest.raises(ConfigError, match=r"another benchmark \(steps 4 -> 5\)"):
        check_manifest(m, build_manifest(s3, plan_runs(s3, tmp_path), tmp_path), tmp_path)


# --------------------------------------------------------------------------- slots
def test_slots_split_the_cores() -> None:
    slots = make_slots(2, gpus=[], cores=5)
    assert [sl.threads for sl in slots] == [2, 2]
    assert slots[0].env() == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert [sl.threads for sl in make_slots(1, gpus=[], cores=4)] == [4]
    with pytest.raises(ConfigError, match="--jobs 5 exceeds"):
        make_slots(5, gpus=[], cores=4)
    with pytest.raises(ConfigError, match="--jobs 0"):
        make_slots(0, gpus=[], cores=4)


def test_slots_one_gpu_each() -> None:
    slots = make_slots(2, gpus=["3", "5"], cores=8)
    assert [sl.env()["CUDA_VISIBLE_DEVICES"] for sl in slots] == ["3", "5"]
    with pytest.raises(ConfigError, match="GPU"):
        make_slots(3, gpus=["0", "1"], cores=8)


def test_subprocess_env_finds_cli() -> None:
    env = subprocess_env(make_slots(1, gpus=[], cores=3)[0])
    root = Path(__file__).resolve().parents[2]
    assert env["PYTHONPATH"].split(":")[0] == str(root) and (root / "cli" / "main.py").is_file()
    assert env["OMP_NUM_THREADS"] == "3"


# --------------------------------------------------------------------------- resume and failures
class FakeProc:
    def __init__(self, rc: int) -> None:
        self.rc = rc

    def poll(self) -> int:
        return self.rc

    def wait(self, timeout: float | None = None) -> int:
        return self.rc

    def terminate(self) -> None:
        pass

    kill = terminate


def _metrics(seed: int, quality: float) -> dict:
    return {"semseg": {"mIoU": 40.0 + seed + quality}, "depth": {"rmse": 1.0 - quality / 100}}


class FakeTrain:
    """Stands in for ``mtlkit train``: records the launch, writes the report (or fails)."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, bool, dict]] = []
        self.fail = fail

    def __call__(self, argv: list[str], env: dict, log: Any) -> FakeProc:
        out = Path(argv[argv.index("--out") + 1])
        self.calls.append((out.name, "--resume" in argv, env))
        if out.name in self.fail:
            log.write("Traceback (most recent call last):\nRuntimeError: boom\n")
            log.flush()
            return FakeProc(1)
        if "--resume" not in argv:
            assert not out.exists(), "a fresh run must start in a new directory"
        seed = int(argv[argv.index("--seed") + 1])
        _report(out, int(argv[argv.index("--steps") + 1]), _metrics(seed, 1.0))
        return FakeProc(0)


def test_resume_runs_only_what_is_unfinished(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    s = _settings(tiny_h5)
    fake = FakeTrain()
    result = run_benchmark(s, out, echo=lambda _: None, launcher=fake)
    assert len(fake.calls) == 8 and not result.failures and len(result.tables) == 3
    assert all(not resume for _, resume, _ in fake.calls)
    assert all(env["OMP_NUM_THREADS"] for _, _, env in fake.calls)
    # simulate a kill: one run lost its report but has a checkpoint, one never checkpointed,
    # one has a report of another length
    runs = out / "runs"
    (runs / "tpim-s1" / "report.json").unlink()
    (runs / "tpim-s1" / "last.pt").write_bytes(b"ckpt")
    (runs / "baseline-s0" / "report.json").unlink()
    (runs / "baseline-s0" / "config.yaml").write_text("partial")
    _report(runs / "single-depth-s1", 2, _metrics(1, 1.0))
    states = {r.name: run_state(r, 4) for r in plan_runs(s, out)}
    assert states["tpim-s1"] == "resume" and states["baseline-s0"] == "fresh"
    assert states["single-depth-s1"] == "fresh" and states["tpim-s0"] == "done"
    fake2 = FakeTrain()
    result = run_benchmark(_settings(tiny_h5), out, echo=lambda _: None, launcher=fake2)
    assert sorted((n, r) for n, r, _ in fake2.calls) == [
        ("baseline-s0", False), ("single-depth-s1", False), ("tpim-s1", True)]
    assert len(result.skipped) == 5 and not result.failures
    launches = [json.loads(x) for x in (out / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 11 and launches[-1]["ok"] and launches[-1]["jobs"] == 1
    # everything finished: a third invocation launches nothing
    fake3 = FakeTrain()
    run_benchmark(_settings(tiny_h5), out, echo=lambda _: None, launcher=fake3)
    assert fake3.calls == []


def test_failed_run_is_reported_and_others_finish(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    fake = FakeTrain(fail={"tpim-s0"})
    lines: list[str] = []
    result = run_benchmark(_settings(tiny_h5, jobs=2), out, echo=lines.append, launcher=fake)
    assert [o.run.name for o in result.failures] == ["tpim-s0"]
    fail = result.failures[0]
    assert fail.returncode == 1 and "boom" in fail.reason and fail.log.is_file()
    assert len(fake.calls) == 8  # every other run still ran
    assert all((out / "runs" / n / "report.json").is_file() for n, _, _ in fake.calls
               if n != "tpim-s0")
    assert result.tables == [] and not (out / "table.md").exists()
    assert any("FAILED tpim-s0" in ln and str(fail.log) in ln for ln in lines)
    with pytest.raises(DataError, match="tpim-s0"):
        build_table(out)
    # fixing the cause and re-running finishes it
    fake2 = FakeTrain()
    result = run_benchmark(_settings(tiny_h5), out, echo=lambda _: None, launcher=fake2)
    assert [n for n, _, _ in fake2.calls] == ["tpim-s0"] and (out / "table.md").is_file()


def test_another_benchmark_in_out_is_refused(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    run_benchmark(_settings(tiny_h5), out, echo=lambda _: None, launcher=FakeTrain())
    before = (out / "benchmark.json").read_text()
    fake = FakeTrain()
    with pytest.raises(ConfigError, match="another benchmark"):
        run_benchmark(_settings(tiny_h5, archs=["baseline"]), out, echo=lambda _: None,
                      launcher=fake)
    assert fake.calls == [] and (out / "benchmark.json").read_text() == before
    other = tmp_path / "notbench"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a benchmark"):
        run_benchmark(_settings(tiny_h5), other, echo=lambda _: None, launcher=fake)
    with pytest.raises(ConfigError, match="is a file"):
        run_benchmark(_settings(tiny_h5), other / "x.txt", echo=lambda _: None, launcher=fake)
    assert fake.calls == []


def test_partial_dir_outside_runs_is_never_removed(tiny_h5: Path, tmp_path: Path) -> None:
    s = _settings(tiny_h5)
    run = plan_runs(s, tmp_path / "b")[0]
    run.dir = tmp_path / "elsewhere"
    run.dir.mkdir()
    with pytest.raises(ConfigError, match="refusing to remove"):
        bench_runner.clear_partial(run, tmp_path / "b")
    assert run.dir.is_dir()


# --------------------------------------------------------------------------- the statistics
MIOU = {"single": [50.0, 52.0, 54.0], "baseline": [55.0, 52.0, 50.4], "tpim": [50.0, 52.0, 54.0]}
RMSE = {"single": [1.0, 0.8, 1.2], "baseline": [0.9, 0.88, 1.08], "tpim": [1.1, 0.88, 1.32]}


def _scripted(tiny_h5: Path, out: Path) -> BenchmarkSettings:
    s = _settings(tiny_h5, seeds=[0, 1, 2])
    for r in _write_manifest(s, out):
        k = r.seed
        if r.reference:
            t = r.tasks[0]
            m = {t: {"mIoU": MIOU["single"][k]} if t == "semseg" else {"rmse": RMSE["single"][k]}}
        else:
            m = {"semseg": {"mIoU": MIOU[r.arch][k], "pixel_acc": 80.0 + k},
                 "depth": {"rmse": RMSE[r.arch][k], "delta1": 0.70 + 0.02 * k}}
        _report(r.dir, 4, m, infer_images_per_s=10.0 * (k + 1))
    log = [{"step": 10 * i, "loss": 1.0, "images_per_s": v} for i, v in enumerate([10, 30, 20])]
    (out / "runs" / "baseline-s0" / "log.jsonl").write_text(
        "\n".join(json.dumps(x) for x in log) + "\n")
    return s


def test_table_statistics_by_hand(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    _scripted(tiny_h5, out)
    table = build_table(out)
    rows = {r["arch"]: r for r in table["rows"]}
    assert table["n"] == 3 and table["seeds"] == [0, 1, 2]
    # delta_m per seed (MTI-Net eq. 2): mean of +(mIoU - ref)/ref and -(rmse - ref)/ref, in %
    # seed 0: (+10 + 10)/2 = 10; seed 1: (0 - 10)/2 = -5; seed 2: (-6.667 + 10)/2 = 1.667
    expected = [10.0, -5.0, (-3.6 / 54 * 100 + 10.0) / 2]
    dm = rows["baseline"]["delta_m"]
    assert list(dm["per_seed"]) == ["0", "1", "2"]
    assert list(dm["per_seed"].values()) == pytest.approx(expected)
    m = sum(expected) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in expected) / 2)
    assert dm["mean"] == pytest.approx(m) and dm["std"] == pytest.approx(sd)
    half = T975_2 * sd / math.sqrt(3)
    assert dm["ci_low"] == pytest.approx(m - half, abs=1e-3)
    assert dm["ci_high"] == pytest.approx(m + half, abs=1e-3)
    assert dm["n"] == 3
    # tpim equals the references on semseg and is 10 % worse on depth every seed: -5 exactly
    tp = rows["tpim"]["delta_m"]
    assert tp["per_seed"] == pytest.approx({"0": -5.0, "1": -5.0, "2": -5.0})
    assert tp["std"] == pytest.approx(0.0, abs=1e-9)
    assert rows["tpim"]["delta_per_task"]["depth"]["mean"] == pytest.approx(-10.0)
    # metrics: mean and sample std over seeds
    miou = rows["baseline"]["metrics"]["semseg"]["mIoU"]
    assert miou["mean"] == pytest.approx(statistics.mean(MIOU["baseline"]))
    assert miou["std"] == pytest.approx(statistics.stdev(MIOU["baseline"]))
    assert rows["baseline"]["metrics"]["semseg"]["pixel_acc"]["mean"] == pytest.approx(81.0)
    ref = rows["single"]["metrics"]["depth"]["rmse"]
    assert ref["std"] == pytest.approx(statistics.stdev(RMSE["single"]))
    # efficiency: train img/s = median of the logged windows (else the report's), inference
    # from the report; the references' images/s: all models per image, 1 / (1/r1 + 1/r2)
    assert rows["baseline"]["train_images_per_s"]["values"] == [20.0, 5.0, 5.0]
    assert rows["baseline"]["infer_images_per_s"]["mean"] == pytest.approx(20.0)
    assert rows["single"]["infer_images_per_s"]["values"] == pytest.approx([5.0, 10.0, 15.0])
    assert rows["baseline"]["params_M"] == pytest.approx(1.0)
    assert rows["baseline"]["gflops"] > 0 and len(rows["single"]["gflops"]) == 2
    assert table["saliency_metric"] == "maxF" and table["main_metrics"] == {
        "semseg": "mIoU", "depth": "rmse"}


def test_table_markdown_is_readme_ready(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    _scripted(tiny_h5, out)
    paths = write_table(out, build_table(out))
    assert [p.name for p in paths] == ["table.json", "table.md", "table.png"]
    assert (out / "table.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "table.md").read_text()
    first = md.splitlines()[0]
    assert first.startswith("`mtlkit benchmark --archs baseline,tpim --seeds 0,1,2 --steps 4")
    assert f"--out {out}`" in first
    assert "| single (x2) |" in md and "| baseline |" in md and "0 (reference)" in md
    assert "52.47 ± 2.34" in md  # baseline mIoU: mean 52.467, sample std sqrt(10.907 / 2)
    assert "+2.22 ± 7.52" in md  # baseline delta_m
    assert "-5.00 ± 0.00" in md and "+10.00, -5.00, +1.67" in md
    assert "n = 3" in md and "t(0.975, 2)" in md
    assert "Saliency metric for delta_m: maxF" in md
    # all-metrics tables: units in the header, delta1 (a fraction in report.json) shown in %
    assert "| arch | rmse (m) | delta1 (%) |" in md and "| baseline | " in md
    assert "| 72.00 ± 2.00 |" in md  # delta1 0.70, 0.72, 0.74


def test_saliency_metric_choice(tmp_path: Path) -> None:
    """delta_m uses saliency maxF or mIoU as asked, and the table says which."""
    from mtlkit.data.synthetic import build_synthetic_h5

    h5 = build_synthetic_h5(tmp_path / "p.h5", train=4, val=2, size=(32, 40), progress=False)
    s = resolve_settings(BenchmarkSettings(
        archs=["baseline"], seeds=[0, 1], steps=2, dataset="synthetic-pascal", data=str(h5),
        tasks=["semseg", "saliency"], size=[32, 40]))
    out = tmp_path / "b"
    for r in _write_manifest(s, out):
        if r.reference:
            m = {"semseg": {"mIoU": 50.0}} if r.tasks == ["semseg"] else {
                "saliency": {"maxF": 80.0, "mIoU": 60.0}}
        else:
            m = {"semseg": {"mIoU": 50.0}, "saliency": {"maxF": 88.0, "mIoU": 54.0}}
        _report(r.dir, 2, m)
    by_maxf = build_table(out, "maxF")
    by_miou = build_table(out, "mIoU")
    assert by_maxf["rows"][1]["delta_m"]["mean"] == pytest.approx((0 + 10.0) / 2)
    assert by_miou["rows"][1]["delta_m"]["mean"] == pytest.approx((0 - 10.0) / 2)
    assert by_miou["main_metrics"]["saliency"] == "mIoU" and by_miou["saliency_in_delta_m"]
    assert "Saliency enters delta_m with mIoU." in table_markdown(by_miou)
    assert "--saliency-metric mIoU" in by_miou["command"]
