"""Scale-out: DDP on CPU (2 gloo processes), gradient accumulation, --amp / --compile /
--tensorboard flags, and the ``--nproc`` relaunch.

Why the comparisons hold. DDP averages per-rank gradients, and every loss here is a mean over
equally many valid pixels per sample (synthetic data: no ignore labels, no invalid depth), so a
global batch of 2 x 2 follows one process with batch 4 - except through BatchNorm, which
normalises each rank's 2 samples separately. torch's SyncBatchNorm has no CPU kernel, so:

- ``baseline`` with its BatchNorm layers removed: 2 ranks x 2 == 1 process x 4;
- ``baseline`` as is: 2 ranks x 2 == 1 process with 2 micro-batches of 2 (``accum=2``), which also
  normalises per 2 samples. BatchNorm running statistics still differ (DDP keeps rank 0's,
  accumulation updates them once per micro-batch), so parameters are compared, not buffers, and
  the cross-rank metric reduction is checked against a single-process evaluation of the DDP run's
  own checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mtlkit.config import RunConfig

# single_thread: compute like the DDP ranks (torchrun sets OMP_NUM_THREADS=1); BatchNorm over 2
# tiny maps amplifies the rounding differences of other thread counts to ~1e-4 within a few steps.
from tests.models._arch_helpers import single_thread

SIZE = (32, 40)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtlkit.data.synthetic import build_synthetic_h5

    path = tmp_path_factory.mktemp("ddp") / "syn.h5"
    build_synthetic_h5(path, train=16, val=8, size=SIZE, seed=0, progress=False)
    return path


def _cfg(h5: Path, out: Path, steps: int, **train_kw: Any) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset = "synthetic-nyud"
    cfg.data.path = str(h5)
    cfg.data.size = list(SIZE)
    cfg.data.tasks = ["semseg", "depth"]
    cfg.data.augment = "none"
    cfg.model.arch = "baseline"
    cfg.model.kwargs = {"channels": 8}
    t = cfg.train
    t.steps, t.batch_size, t.optimizer, t.lr, t.momentum = steps, 4, "sgd", 0.05, 0.9
    t.warmup_steps, t.clip_grad, t.eval_every, t.ckpt_every, t.log_every = 0, None, 0, 0, 1
    t.weighting, t.out = "fixed", str(out)
    for k, v in train_kw.items():
        setattr(t, k, v)
    return cfg


def _strip_bn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by Identity (a batch-composition-free model)."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.Identity())
        else:
            _strip_bn(child)
    return model


def _bn_free_create() -> Any:
    """``create_model`` whose models have no BatchNorm (patched in by the tests)."""
    import mtlkit.models

    original = mtlkit.models.create_model
    return lambda *a, **kw: _strip_bn(original(*a, **kw))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_dict: dict, bn_free: bool, dump: str) -> None:
    """One DDP rank (torch.multiprocessing.spawn): env as torchrun would set it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MTLKIT_DEVICE="cpu")
    torch.set_num_threads(1)
    if bn_free:
        import mtlkit.models

        mtlkit.models.create_model = _bn_free_create()  # build_parts imports it at call time
    from mtlkit.engine import distributed as dist_utils
    from mtlkit.engine.trainer import Trainer

    trainer = Trainer(RunConfig.from_dict(cfg_dict), progress=False)
    try:
        report = trainer.fit()
        torch.save({"model": trainer.model.state_dict(),
                    "weighting": trainer.weighting.checkpoint_state(), "report": report},
                   Path(dump) / f"rank{rank}.pt")
    finally:
        dist_utils.cleanup(trainer.ctx)


def _losses(run: Path) -> list[float]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"loss"' in x]


def _params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(BN_BUFFERS)}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=k)


# ----------------------------------------------------------------------------- DDP
def test_ddp_two_ranks_equal_one_process_with_the_global_batch(
    h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.multiprocessing as mp

    from mtlkit.engine.trainer import train

    ddp_cfg = _cfg(h5, tmp_path / "ddp", 4, batch_size=2, weighting="uncertainty")
    mp.spawn(_worker, args=(2, _free_port(), ddp_cfg.to_dict(), True, str(tmp_path)), nprocs=2)

    monkeypatch.setattr("mtlkit.models.create_model", _bn_free_create())
    with single_thread():
        train(_cfg(h5, tmp_path / "one", 4, batch_size=4, weighting="uncertainty"),
              progress=False)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for k, v in r0["model"].items():  # DDP keeps the replicas identical
        assert torch.equal(v, r1["model"][k]), k
    # the learnable loss weights live outside DDP: their gradients are all-reduced too
    lv0, lv1 = r0["weighting"]["params"]["log_vars"], r1["weighting"]["params"]["log_vars"]
    assert torch.equal(lv0, lv1) and not torch.equal(lv0, torch.zeros_like(lv0))

    one = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in ddp["model"])  # the unwrapped model
    _assert_close(ddp["model"], one["model"])
    _assert_close(ddp["weighting"]["params"], one["weighting"]["params"])
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    assert ddp["step"] == one["step"] == 4


def _cli(args: list[str]) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output


def _cli_args(h5: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """Options of the CLI runs; the YAML file sets what has no option (LPS period: 1 step, so
    that LPS reaches its H + 1 = 4 periods of history within 6 steps)."""
    config = out.parent / "lps.yaml"
    config.write_text("train: {weighting_kwargs: {period: 1}}\n")
    return ["--config", str(config), "--dataset", "synthetic-nyud", "--data", str(h5),
            "--size", "32x40", "--tasks", "semseg,depth,normals", "--augment", "none",
            "--arch", "baseline", "--model-arg", "channels=8", "--optimizer", "sgd", "--lr", "0.05",
            "--steps", str(steps), "--weighting", "lps", "--eval-every", "3",
            "--ckpt-every", "3", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def ddp_run(h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mtlkit train --nproc 2`` with BatchNorm, LPS weighting (period 1 step), 6 steps."""
    out = tmp_path_factory.mktemp("cli") / "ddp"
    _cli(_cli_args(h5, out, 6, "--batch-size", "2", "--nproc", "2"))
    return out


def test_cli_nproc_equals_accumulation_and_reduces_metrics(
    ddp_run: Path, h5: Path, tmp_path: Path
) -> None:
    from mtlkit.config import load_config
    from mtlkit.engine.evaluator import evaluate_checkpoint
    from mtlkit.engine.trainer import train

    cfg = load_config(ddp_run / "config.yaml")
    assert cfg.train.batch_size == 2 and cfg.train.accum == 1
    cfg.train.accum, cfg.train.out = 2, str(tmp_path / "accum")
    with single_thread():
        train(cfg, progress=False)

    ddp = torch.load(ddp_run / "last.pt", weights_only=False)
    acc = torch.load(tmp_path / "accum" / "last.pt", weights_only=False)
    _assert_close(_params(ddp["model"]), _params(acc["model"]))
    assert _losses(ddp_run) == pytest.approx(_losses(tmp_path / "accum"), rel=1e-5)
    # LPS histories are averaged over the ranks: both runs saw the same period means
    h_ddp, h_acc = ddp["weighting"]["extra"], acc["weighting"]["extra"]
    assert len(h_ddp["history"]) == 4 and h_ddp["w"] != [1.0, 1.0, 1.0]
    for got, want in zip(h_ddp["history"], h_acc["history"], strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert h_ddp["w"] == pytest.approx(h_acc["w"], rel=1e-4)

    # metrics: 2 ranks x 4 val images, accumulators merged == one process on all 8 images
    report = json.loads((ddp_run / "report.json").read_text())
    with single_thread():
        single = evaluate_checkpoint(str(ddp_run / "last.pt"), batch_size=2,
                                     out_dir=str(tmp_path / "eval"), progress=False)
    assert set(report["metrics"]) == {"semseg", "depth", "normals"}
    for task, vals in single["metrics"].items():
        for name, v in vals.items():
            got = report["metrics"][task][name]
            if isinstance(v, list):
                assert got == pytest.approx(v, rel=1e-5, abs=1e-6), (task, name)
            elif v is not None:
                assert got == pytest.approx(v, rel=1e-5, abs=1e-6), (task, name)


def test_ddp_resume_is_exact(ddp_run: Path, h5: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    _cli(_cli_args(h5, cut, 3, "--batch-size", "2", "--nproc", "2"))
    _cli(_cli_args(h5, cut, 6, "--batch-size", "2", "--nproc", "2", "--resume"))
    a = torch.load(ddp_run / "last.pt", weights_only=False)
    b = torch.load(cut / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["weighting"] == b["weighting"]
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])


# ----------------------------------------------------------------------------- accumulation
def test_accumulation_equals_the_large_batch(
    h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtlkit.engine.trainer import train

    monkeypatch.setattr("mtlkit.models.create_model", _bn_free_create())
    train(_cfg(h5, tmp_path / "acc", 3, batch_size=2, accum=2), progress=False)
    train(_cfg(h5, tmp_path / "big", 3, batch_size=4), progress=False)
    a = torch.load(tmp_path / "acc" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "big" / "last.pt", weights_only=False)["model"]
    _assert_close(a, b)
    assert _losses(tmp_path / "acc") == pytest.approx(_losses(tmp_path / "big"), rel=1e-5)


# ----------------------------------------------------------------------------- flags
def test_amp_is_a_noop_on_cpu(h5: Path, tmp_path: Path) -> None:
    from mtlkit.engine.trainer import train

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    train(_cfg(h5, tmp_path / "amp", 2, amp=True), progress=False)
    train(_cfg(h5, tmp_path / "fp32", 2, amp=False), progress=False)
    a = torch.load(tmp_path / "amp" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "fp32" / "last.pt", weights_only=False)["model"]
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def test_tensorboard_and_compile_flags(h5: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlkit.config import load_config

    out = tmp_path / "tb"
    _cli(["--dataset", "synthetic-nyud", "--data", str(h5), "--size", "32x40", "--tasks",
          "semseg,depth", "--arch", "baseline", "--model-arg", "channels=8", "--steps", "2",
          "--batch-size", "4", "--tensorboard", "--out", str(out), "--quiet"])
    assert (out / "log.jsonl").is_file()
    assert list(out.glob("events.out.tfevents.*")), sorted(p.name for p in out.iterdir())
    # --compile and --sync-bn reach the configuration (torch.compile itself is stubbed: a
    # real CPU compile is slow, and --steps 0 is no longer a valid run)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    out2 = tmp_path / "compiled"
    _cli(["--dataset", "synthetic-nyud", "--data", str(h5), "--size", "32x40", "--tasks",
          "semseg", "--arch", "baseline", "--model-arg", "channels=8", "--steps", "1",
          "--batch-size", "4", "--eval-every", "0", "--compile", "--sync-bn", "--out", str(out2),
          "--quiet"])
    cfg = load_config(out2 / "config.yaml")
    assert cfg.train.compile and cfg.train.sync_bn and not cfg.train.tensorboard


def test_nproc_relaunches_the_same_command(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    import subprocess

    from typer.testing import CliRunner

    from cli.main import app

    calls: list[list[str]] = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: calls.append(cmd) or 3)
    run = tmp_path / "x"  # --resume needs a run with a checkpoint (checked before launching)
    run.mkdir()
    (run / "last.pt").write_bytes(b"checkpoint")
    res = CliRunner().invoke(app, ["train", "--arch", "baseline", "--steps", "5", "--no-amp",
                                   "--nproc", "4", "--model-arg", "channels=8",
                                   "--model-arg", "depth=2", "--resume", "--out", str(run)])
    assert res.exit_code == 3  # the launcher's status is passed on
    (cmd,) = calls
    i = cmd.index("torch.distributed.run")
    assert cmd[i + 1:i + 7] == ["--standalone", "--nnodes", "1", "--nproc_per_node", "4", "-m"]
    args = cmd[cmd.index("train") + 1:]
    assert "--nproc" not in args and "--resume" in args and "--no-amp" in args
    assert args[args.index("--steps") + 1] == "5" and args[args.index("--arch") + 1] == "baseline"
    assert [args[j + 1] for j, a in enumerate(args) if a == "--model-arg"] == [
        "channels=8", "depth=2"]
