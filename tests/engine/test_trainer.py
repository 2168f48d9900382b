"""Trainer: exact resume, run-directory contract, learning on synthetic data, checkpoint errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtlkit.config import RunConfig, load_config
from mtlkit.engine.trainer import Trainer, load_checkpoint, lr_factor, train
from mtlkit.errors import CheckpointError, ConfigError


def _cfg(h5: Path, out: Path, steps: int, **train_kw: object) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset = "synthetic-nyud"
    cfg.data.path = str(h5)
    cfg.data.size = [64, 80]
    cfg.model.arch = "baseline"
    cfg.model.kwargs = {"channels": 16}
    cfg.train.steps = steps
    cfg.train.batch_size = 4
    cfg.train.ckpt_every = 3
    cfg.train.eval_every = 0
    cfg.train.warmup_steps = 2
    cfg.train.log_every = 1
    cfg.train.out = str(out)
    for k, v in train_kw.items():
        setattr(cfg.train, k, v)
    return cfg


class _Killed(Exception):
    pass


def test_resume_is_exact(tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(tiny_h5, tmp_path / "full", 8), progress=False)
    # the same run killed while computing step 5 (last checkpoint: step 3); the resumed run
    # crosses the epoch boundary at step 6 (24 images / batch 4)
    original = Trainer.train_step

    def dying(self: Trainer, batches: list) -> dict:
        if self.step == 4:
            raise _Killed
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(_Killed):
        train(_cfg(tiny_h5, tmp_path / "cut", 8), progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 3
    monkeypatch.setattr(Trainer, "train_step", original)
    train(_cfg(tiny_h5, tmp_path / "cut", 8), resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])


def test_run_directory_contract(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = train(_cfg(tiny_h5, out, 4, eval_every=2), progress=False)
    for name in ("config.yaml", "last.pt", "best.pt", "log.jsonl", "report.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    for key in ("arch", "backbone", "dataset", "tasks", "steps", "params", "images_per_s",
                "metrics"):
        assert key in report
    m = report["metrics"]
    assert set(m) == {"semseg", "depth", "normals", "edge"}
    assert 0 <= m["semseg"]["mIoU"] <= 100 and m["depth"]["rmse"] > 0
    assert "odsF" in m["edge"] and "mean" in m["normals"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "metrics" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"loss", "lr", "images_per_s", "loss_semseg", "loss_depth"} <= set(steps[0])
    assert [r["step"] for r in evals] == [2, 4]
    ckpt = load_checkpoint(out / "last.pt")
    for key in ("model", "optimizer", "scheduler", "step", "config", "rng", "weighting", "scaler"):
        assert key in ckpt
    # config.yaml is reusable with --config
    again = load_config(out / "config.yaml")
    assert again.model.arch == "baseline" and again.train.steps == 4


def test_loss_decreases(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "learn"
    train(_cfg(tiny_h5, out, 30, lr=3e-3, log_every=1), progress=False)
    losses = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_resume_from_other_arch_is_refused(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(tiny_h5, out, 3), progress=False)
    cfg = _cfg(tiny_h5, out, 6)
    cfg.model.arch = "single"
    cfg.data.tasks = ["semseg"]
    with pytest.raises(CheckpointError, match="arch 'baseline'"):
        train(cfg, resume=True, progress=False)


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unknown_task_for_dataset(tiny_h5: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_h5, tmp_path / "x", 1)
    cfg.data.tasks = ["semseg", "parts"]
    with pytest.raises(ConfigError, match="no task"):
        train(cfg, progress=False)


def test_lr_schedule_warmup_then_poly() -> None:
    cfg = RunConfig()
    cfg.train.steps, cfg.train.warmup_steps, cfg.train.poly_power = 100, 10, 1.0
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(50, cfg) == pytest.approx(0.5)
    assert lr_factor(100, cfg) == 0.0
