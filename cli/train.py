"""``mtlkit train``: train a multi-task model and print its metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, parse_list, parse_size, user_errors
from mtlkit.config import DataConfig, ModelConfig, TrainConfig

DEFAULT_ARCH = "tpim"
_D, _M, _T = DataConfig(), ModelConfig(), TrainConfig()


def _model_args(items: list[str] | None) -> dict:
    import yaml

    from mtlkit.errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"bad --model-arg {item!r}", "write KEY=VALUE, e.g. channels=64")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


@user_errors
def train(
    ctx: typer.Context,
    arch: Annotated[str, typer.Option(
        help="architecture (see mtlkit list)")] = DEFAULT_ARCH,
    dataset: Annotated[str, typer.Option(
        help="dataset name (see mtlkit list)")] = _D.dataset,
    data: Annotated[str | None, typer.Option(
        help="preprocessed .h5 file", show_default="synthetic: rendered into the cache")] = None,
    backbone: Annotated[str, typer.Option(
        help="tiny or timm:<name>")] = _M.backbone,
    pretrained: Annotated[str | None, typer.Option(
        help="local backbone weights file", show_default="none")] = None,
    tasks: Annotated[str | None, typer.Option(
        help="comma list, e.g. semseg,depth", show_default="all tasks of the dataset")] = None,
    aux_tasks: Annotated[str | None, typer.Option(
        help="auxiliary-only tasks", show_default="none")] = None,
    size: Annotated[str | None, typer.Option(
        help="input size HxW, each side >= 32",
        show_default="the dataset's, 128x160 for synthetic")] = None,
    augment: Annotated[str | None, typer.Option(
        help="mtlpt | pascal | atrc | none", show_default="the dataset's preset")] = None,
    steps: Annotated[int, typer.Option(
        help="optimiser steps (>= 1)")] = _T.steps,
    batch_size: Annotated[int, typer.Option(
        help="batch size per process (>= 1)")] = _T.batch_size,
    lr: Annotated[float, typer.Option(
        help="peak learning rate (> 0)")] = _T.lr,
    optimizer: Annotated[str, typer.Option(
        help="adamw | adam | sgd")] = _T.optimizer,
    weighting: Annotated[str | None, typer.Option(
        help="loss weighting (see mtlkit list)", show_default="the arch's own")] = None,
    accum: Annotated[int, typer.Option(
        help="gradient accumulation steps (>= 1)")] = _T.accum,
    seed: Annotated[int, typer.Option(help="random seed")] = _T.seed,
    ckpt_every: Annotated[int, typer.Option(
        help="checkpoint period in steps (0: only at the end)")] = _T.ckpt_every,
    eval_every: Annotated[int, typer.Option(
        help="evaluation period in steps (0: only at the end)")] = _T.eval_every,
    eval_batches: Annotated[int | None, typer.Option(
        help="batches per periodic eval (>= 1)", show_default="the whole val split")] = None,
    workers: Annotated[int, typer.Option(
        help="DataLoader workers (>= 0)")] = _D.num_workers,
    amp: Annotated[bool, typer.Option(
        "--amp/--no-amp", help="bf16 autocast (CUDA only; a no-op on CPU)")] = _T.amp,
    compile: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="torch.compile the model")] = _T.compile,
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard/--no-tensorboard",
        help="TensorBoard event files beside log.jsonl")] = _T.tensorboard,
    sync_bn: Annotated[bool, typer.Option(
        "--sync-bn/--no-sync-bn", help="SyncBatchNorm across processes (GPUs)")] = _T.sync_bn,
    nproc: Annotated[int, typer.Option(
        help="processes on this machine (DDP via torch.distributed.run; one per GPU)")] = 1,
    model_arg: Annotated[list[str] | None, typer.Option(
        help="arch kwarg KEY=VALUE (repeat)", show_default="none")] = None,
    out: Annotated[str | None, typer.Option(
        help="run directory", show_default="runs/<arch>-<dataset>")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML run configuration (e.g. configs/tpim_nyud_hrnet18.yaml)",
        show_default="none")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="remove the run --out holds and start again")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    single_task: Annotated[list[str] | None, typer.Option(
        help="single-task run dir (repeat per task): report.json gets delta_m",
        show_default="none")] = None,
    saliency_metric: Annotated[str, typer.Option(
        help="saliency metric of delta_m: maxF (ATRC/InvPT) or mIoU (MTI-Net)")] = "maxF",
) -> None:
    """Train a model (defaults: the main demo job, TPIM on synthetic-nyud on CPU).

    A directory that holds a run is continued with --resume or started again with --overwrite;
    on resume only --steps (upwards), --eval-every, --ckpt-every, --eval-batches, --workers,
    --tensorboard and --compile may change.
    """
    from mtlkit.config import RunConfig, load_config
    from mtlkit.engine.report import metrics_table
    from mtlkit.engine.trainer import train as run_train
    from mtlkit.errors import ConfigError
    from mtlkit.metrics.delta_m import main_metrics

    main_metrics(saliency_metric)  # a bad name fails before anything is read or written
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} is out of range", "it must be >= 1")

    def given(value, name: str):  # the value when the option was passed, else None
        return value if _given(ctx, name) else None

    if resume and config is None and out is not None and (Path(out) / "config.yaml").is_file():
        config = Path(out) / "config.yaml"
    cfg = load_config(config) if config else RunConfig()
    if config is None:
        cfg.model.arch = DEFAULT_ARCH
    cfg.override("data", dataset=given(dataset, "dataset"), path=data, tasks=parse_list(tasks),
                 aux_tasks=parse_list(aux_tasks), size=parse_size(size), augment=augment,
                 num_workers=given(workers, "workers"))
    cfg.override("model", arch=given(arch, "arch"), backbone=given(backbone, "backbone"),
                 pretrained=pretrained)
    cfg.model.kwargs.update(_model_args(model_arg))
    cfg.override("train", steps=given(steps, "steps"), batch_size=given(batch_size, "batch_size"),
                 lr=given(lr, "lr"), optimizer=given(optimizer, "optimizer"),
                 weighting=weighting, accum=given(accum, "accum"), seed=given(seed, "seed"),
                 ckpt_every=given(ckpt_every, "ckpt_every"),
                 eval_every=given(eval_every, "eval_every"), eval_batches=eval_batches,
                 amp=given(amp, "amp"), out=out, compile=given(compile, "compile"),
                 tensorboard=given(tensorboard, "tensorboard"), sync_bn=given(sync_bn, "sync_bn"))
    if out is None and (config is None or cfg.train.out == "runs/default"):
        cfg.train.out = f"runs/{cfg.model.arch}-{cfg.data.dataset}"
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        raise typer.Exit(_launch_locked(ctx, nproc, cfg, resume=resume, overwrite=overwrite))
    main = int(os.environ.get("RANK", "0")) == 0
    if cfg.train.amp and main and not _cuda_used():
        console.print("note: --amp (bf16 autocast) applies on CUDA only; training in float32")
    report = run_train(cfg, resume=resume, progress=not quiet, console=console,
                       single_task=single_task, saliency_metric=saliency_metric,
                       overwrite=overwrite)
    if not main:
        return
    console.print(f"{report['arch']} on {report['dataset']} after {report['steps']} steps "
                  f"({report['params'] / 1e6:.2f} M params, {report['images_per_s']:.1f} img/s), "
                  "validation split:", highlight=False)
    console.print(metrics_table(report["metrics"], title=None))
    if "delta_m" in report:
        used = ", ".join(f"{t} {m}" for t, m in report["delta_m_metrics"].items())
        console.print(f"delta_m vs single-task runs ({used}): {report['delta_m']:+.2f} %")
    console.print(f"run directory: [bold]{cfg.train.out}[/]")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was set on the command line (or its environment variable), as
    opposed to left at the default shown in --help: only given options override --config."""
    src = ctx.get_parameter_source(name)  # by name: typer may bring its own click's enum
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def _cuda_used() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("MTLKIT_DEVICE", "") != "cpu"


def _launch_locked(ctx: typer.Context, nproc: int, cfg, *, resume: bool,
                   overwrite: bool) -> int:
    """Check the configuration and the run directory here, hold its lock while the ranks run
    (they see :data:`~mtlkit.engine.rundir.LOCK_ENV`), and return their exit status."""
    from mtlkit.engine import rundir
    from mtlkit.engine.trainer import absolute_paths, check_run_dir, resolve_config

    resolve_config(absolute_paths(cfg))
    check_run_dir(cfg, resume=resume, overwrite=overwrite)
    lock = rundir.RunLock(cfg.train.out).acquire()
    try:
        return _relaunch(ctx, nproc, {rundir.LOCK_ENV: str(Path(cfg.train.out).absolute())})
    finally:
        lock.release(remove_created=True)


def _relaunch(ctx: typer.Context, nproc: int, extra_env: dict[str, str] | None = None) -> int:
    """Run this same command under ``torch.distributed.run`` with ``nproc`` processes.

    The child command is rebuilt from the parsed options (all but ``--nproc``), so it is the same
    whether this process was started from a shell or from Python; returns the exit status.
    """
    argv: list[str] = []
    for p in ctx.command.params:
        value = ctx.params.get(p.name or "")
        if p.name == "nproc" or value is None or not getattr(p, "opts", None):
            continue
        if not _given(ctx, p.name or ""):  # the ranks fall back to the same defaults
            continue
        if getattr(p, "is_flag", False):
            if value:
                argv.append(p.opts[0])
            elif p.secondary_opts:
                argv.append(p.secondary_opts[0])
            continue
        for v in value if p.multiple else [value]:
            argv += [p.opts[0], str(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(nproc), "-m", "cli.main", "train", *argv]
    env = dict(os.environ, **(extra_env or {}))
    root = str(Path(__file__).resolve().parent.parent)  # so that ``-m cli.main`` resolves
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
    return subprocess.call(cmd, env=env)
