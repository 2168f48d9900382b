"""Evaluation: run a model over a split and pool every task's metric over the whole split.

Predictions are ``model(image)["final"]``, postprocessed by each TaskSpec (argmax, sigmoid,
normalisation) and fed to the task's accumulator (SPEC: pooled over the split, not per image).
Pixels outside a sample's original size (``meta.hw``, PASCAL padding) are ignored because the
dataset marks them invalid in the targets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtlkit.tasks import TaskSpec


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    from mtlkit.data import collate

    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()
    }


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    loader: DataLoader,
    specs: dict[str, TaskSpec],
    device: torch.device,
    *,
    amp: bool = False,
    max_batches: int | None = None,
    metrics: dict[str, Any] | None = None,
    fast: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``loader``; returns the (unreduced) accumulators per task.

    ``fast``: cheaper metric settings for periodic evaluation during training (the boundary
    F-measure on 9 thresholds instead of 99); final and ``mtlkit evaluate`` results use the full
    protocol.

    ``specs``: the tasks to score (those in the model's ``final`` output). Call
    :func:`compute_metrics` on the result (after merging across ranks under DDP).
    """
    was_training = model.training
    model.eval()
    metrics = metrics or {t: s.make_metric(fast=fast) for t, s in specs.items()}
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, batch in enumerate(loader):
        if i >= total:
            break
        batch = to_device(batch, device)
        with _autocast(device, amp):
            out = model(batch["image"])["final"]
        hw = batch.get("meta", {}).get("hw")
        for t, spec in specs.items():
            pred, target = spec.postprocess(out[t]).cpu(), batch[t].cpu()
            if t == "edge" and hw is not None:  # tolerance from the unpadded image diagonal
                metrics[t].update(pred, target, hw=hw)
            else:
                metrics[t].update(pred, target)
        if on_batch is not None:
            on_batch(i + 1, total)
    model.train(was_training)
    return metrics


def compute_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{task: {metric: value}}`` from accumulators; NaNs become None (valid JSON)."""
    result: dict[str, dict[str, Any]] = {}
    for t, m in metrics.items():
        vals = {}
        for k, v in m.compute().items():
            if isinstance(v, float) and math.isnan(v):
                v = None
            vals[k] = v
        result[t] = vals
    return result


def main_scores(results: dict[str, dict[str, Any]], specs: dict[str, TaskSpec]) -> dict[str, float]:
    """The main metric of each task (semseg mIoU, depth rmse, ...)."""
    return {t: results[t][specs[t].main_metric] for t in results}


def load_run_model(checkpoint: str, data: str | None = None, device: str | None = None, *,
                   progress: bool = False, console: Any = None):
    """Rebuild the model of a checkpoint and load its weights.

    Returns ``(model, parts, state)``; ``data`` overrides the dataset file of the run (whose
    val split is checked against the run's configuration first).
    """
    from mtlkit.config import RunConfig
    from mtlkit.engine.trainer import build_parts, load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = RunConfig.from_dict(state["config"], source=f"{checkpoint}: config")
    if data is not None:
        cfg.data.path = data
    parts = build_parts(cfg, need_train=False, progress=progress, console=console)
    try:
        parts.model.load_state_dict(state["model"])
    except RuntimeError as e:
        from mtlkit.errors import CheckpointError

        raise CheckpointError(
            f"checkpoint {checkpoint!r} does not match its own configuration "
            f"({str(e).splitlines()[0]})",
            "was it written by another mtlkit version?",
        ) from e
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parts.model.to(dev).eval()
    return parts.model, parts, state


def evaluate_checkpoint(
    checkpoint: str,
    *,
    split: str = "val",
    data: str | None = None,
    batch_size: int = 8,
    out_dir: str | None = None,
    progress: bool = True,
    figures: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes ``eval.json`` and ``eval.md`` next to it.

    Returns ``{"checkpoint", "split", "step", "metrics": {task: {metric: value}}}``, plus
    ``"pr_curves"`` (``{task: {"thresholds", "precision", "recall", "F"}}`` of the boundary
    tasks; per-class IoU is in ``metrics[task]["per_class_IoU"]``). With ``figures``, eval.md
    also embeds the run's ``curves.png`` (drawn from ``log.jsonl`` when present) and up to 3
    prediction panels (``panels/``, when the run's .h5 file is available).

    Checked before any work: ``batch_size >= 1``, the output folder is writable, and the split's
    labels are valid over the whole file (:func:`mtlkit.data.check.check_data`). Progress goes to
    ``console`` (default stderr): a bar on a terminal, plain lines in a log.
    """
    from pathlib import Path

    from mtlkit.data import build_dataset
    from mtlkit.data.check import check_data
    from mtlkit.engine.report import write_eval_files
    from mtlkit.errors import ConfigError
    from mtlkit.utils import check_writable, progress_bar

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} is out of range", "it must be >= 1")
    dest = Path(out_dir) if out_dir else Path(checkpoint).parent
    check_writable(dest, kind="folder")
    model, parts, state = load_run_model(checkpoint, data, progress=progress, console=console)
    cfg = parts.cfg
    ds = (
        parts.val_set
        if split == "val"
        else build_dataset(
            cfg.data.dataset,
            path=cfg.data.path,
            split=split,
            tasks=list(parts.specs),
            size=parts.size,
            train=False,
            augment=cfg.data.augment,
        )
    )
    specs = {t: parts.specs[t] for t in parts.tasks}
    if split != "val" and getattr(ds, "path", None) is not None:  # val: by load_run_model
        check_data(ds.path, cfg.data.dataset, list(parts.specs), (split,), progress=progress,
                   console=console)
    loader = make_eval_loader(ds, batch_size)
    device = next(model.parameters()).device
    accumulators = {t: s.make_metric() for t, s in specs.items()}
    if "edge" in accumulators:  # exact boundary matching: score images in parallel processes
        accumulators["edge"].workers = max(1, min(4, os.cpu_count() or 1))
    with progress_bar(len(loader), f"evaluate {split}", progress, console) as advance:
        metrics = run_evaluation(model, loader, specs, device, metrics=accumulators,
                                 on_batch=lambda i, n: advance())
    if "edge" in metrics:
        metrics["edge"].close()
    result = {
        "checkpoint": str(checkpoint),
        "split": split,
        "step": int(state["step"]),
        "arch": cfg.model.arch,
        "dataset": cfg.data.dataset,
        "metrics": compute_metrics(metrics),
    }
    pr_curves = _pr_curves(metrics)
    if pr_curves:
        result["pr_curves"] = pr_curves
    images = _eval_figures(checkpoint, dest, data or cfg.data.path) if figures else None
    write_eval_files(dest, result, images)
    return result


def _pr_curves(metrics: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """The precision/recall curves of the accumulators that have one (BoundaryF)."""
    out = {}
    for t, m in metrics.items():
        if hasattr(m, "pr_curve") and int(getattr(m, "state", {}).get("n_images", 1)) > 0:
            out[t] = m.pr_curve()
    return out


def _eval_figures(checkpoint: str, dest: Path, data: str | None) -> dict[str, list[str]]:
    """Training curves and a few prediction panels for eval.md; best effort, never fatal."""
    import logging
    import os

    from mtlkit.errors import MtlkitError

    run_dir = Path(checkpoint).parent
    images: dict[str, list[str]] = {}
    curves = run_dir / "curves.png"
    if (run_dir / "log.jsonl").is_file():
        from mtlkit.engine.plot import plot_run

        try:
            plot_run(run_dir)
        except (MtlkitError, OSError, ValueError) as e:
            logging.getLogger(__name__).warning("training curves not drawn: %s", e)
    if curves.is_file():
        images["Training curves"] = [Path(os.path.relpath(curves, dest)).as_posix()]
    if data and Path(data).is_file() and Path(data).suffix in (".h5", ".hdf5"):
        from mtlkit.engine.predict import predict

        try:
            paths = predict(checkpoint, data, str(dest / "panels"), limit=3)
        except (MtlkitError, OSError, ValueError, KeyError) as e:
            logging.getLogger(__name__).warning("prediction panels not drawn: %s", e)
            paths = []
        images["Predictions (input, prediction, ground truth)"] = [
            Path(os.path.relpath(p, dest)).as_posix() for p in paths
        ]
    return images
