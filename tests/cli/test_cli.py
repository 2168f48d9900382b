"""End-to-end CLI: preprocess -> train -> evaluate -> predict on a tiny dataset, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def _run(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cli_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "syn.h5"
    res = _run("preprocess", "synthetic", "--out", out, "--train", 12, "--val", 4,
               "--size", "64x80", "--seed", 1)
    assert res.exit_code == 0, res.output
    assert out.is_file() and not Path(str(out) + ".tmp").exists()
    return out


@pytest.fixture(scope="module")
def run_dir(cli_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r"
    res = _run("train", "--arch", "baseline", "--dataset", "synthetic-nyud", "--data", cli_h5,
               "--size", "64x80", "--steps", 20, "--batch-size", 4, "--seed", 0,
               "--ckpt-every", 10, "--eval-every", 10, "--out", out, "--quiet",
               "--model-arg", "channels=16")
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output and "rmse" in res.output
    return out


def test_train_writes_run_directory(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"] == 20 and report["arch"] == "baseline"
    assert (run_dir / "best.pt").is_file() and (run_dir / "config.yaml").is_file()


def test_evaluate(run_dir: Path) -> None:
    res = _run("evaluate", "--checkpoint", run_dir / "last.pt")
    assert res.exit_code == 0, res.output
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 20
    report = json.loads((run_dir / "report.json").read_text())
    # evaluating the final checkpoint reproduces the report's metrics
    assert result["metrics"]["depth"]["rmse"] == pytest.approx(report["metrics"]["depth"]["rmse"])
    assert (run_dir / "eval.md").is_file()


def test_predict_writes_pngs(run_dir: Path, cli_h5: Path, tmp_path: Path) -> None:
    res = _run("predict", "--checkpoint", run_dir / "last.pt", "--images", cli_h5,
               "--out", tmp_path / "panels", "--limit", 3)
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "panels").glob("*.png"))
    assert len(pngs) == 3
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a folder of plain images works too (prediction only): a panel and per-task files each
    res = _run("predict", "--checkpoint", run_dir / "last.pt", "--images", tmp_path / "panels",
               "--out", tmp_path / "panels2", "--limit", 2)
    assert res.exit_code == 0, res.output
    out = tmp_path / "panels2"
    panels = [p for p in out.glob("*.png") if "." not in p.stem]
    assert len(panels) == 2
    for p in panels:
        for suffix in ("semseg.png", "depth.npy", "depth.png", "normals.png", "edge.png"):
            assert (out / f"{p.stem}.{suffix}").is_file(), suffix


def test_resume_continues(run_dir: Path, cli_h5: Path) -> None:
    res = _run("train", "--out", run_dir, "--resume", "--steps", 22, "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "report.json").read_text())["steps"] == 22


def test_list() -> None:
    res = _run("list")
    assert res.exit_code == 0, res.output
    for name in ("baseline", "single", "tiny", "synthetic-nyud", "fixed"):
        assert name in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--arch", "nope", "--steps", "1"], "unknown arch 'nope'"),
        (["train", "--dataset", "nope", "--steps", "1"], "unknown dataset 'nope'"),
        (["train", "--backbone", "nope", "--steps", "1", "--arch", "baseline"],
         "unknown backbone 'nope'"),
        (["train", "--tasks", "semseg,nope", "--steps", "1"], "nope"),
        (["train", "--size", "12by5"], "bad size"),
        (["train", "--dataset", "nyud", "--data", "/nonexistent/nyud.h5"], "nyud.h5"),
        (["evaluate", "--checkpoint", "/nonexistent/last.pt"], "not found"),
        (["preprocess", "synthetic", "--train", "0"], "--train"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    res = _run(*args, *(["--out", str(tmp_path / "o")] if args[0] == "train" else []))
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_corrupt_h5_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage" * 100)
    res = _run("train", "--arch", "baseline", "--data", str(bad), "--steps", "1",
               "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    assert "bad.h5" in res.output and "Traceback" not in res.output


def test_checkpoint_of_other_arch(run_dir: Path, cli_h5: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    res = _run("train", "--out", other, "--resume", "--arch", "single", "--tasks", "semseg",
               "--steps", 30, "--quiet")
    assert res.exit_code == 2, res.output
    assert "arch 'baseline'" in res.output


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"\x00" * 64)
    res = _run("evaluate", "--checkpoint", bad)
    assert res.exit_code == 2 and "corrupt" in res.output


def test_train_reports_delta_m_against_single_task_runs(cli_h5: Path, tmp_path: Path) -> None:
    common = ["--dataset", "synthetic-nyud", "--data", cli_h5, "--size", "64x80", "--steps", 3,
              "--batch-size", 4, "--eval-every", 0, "--quiet", "--model-arg", "channels=8"]
    res = _run("train", "--arch", "single", "--tasks", "depth", "--out", tmp_path / "st", *common)
    assert res.exit_code == 0, res.output
    res = _run("train", "--arch", "baseline", "--tasks", "semseg,depth", "--out", tmp_path / "mt",
               "--single-task", tmp_path / "st", *common)
    assert res.exit_code == 0, res.output
    mt = json.loads((tmp_path / "mt" / "report.json").read_text())
    st = json.loads((tmp_path / "st" / "report.json").read_text())
    rm, rs = mt["metrics"]["depth"]["rmse"], st["metrics"]["depth"]["rmse"]
    assert mt["delta_m_tasks"] == ["depth"]  # semseg has no reference
    assert mt["delta_m"] == pytest.approx(-100 * (rm - rs) / rs)
    assert "delta_m" in res.output
