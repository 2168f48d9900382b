"""Distributed data parallel helpers (torchrun): process group, model wrapping, reductions.

Under ``torchrun`` (env ``WORLD_SIZE`` > 1) each process trains on its slice of every global batch
(:class:`~mtlkit.engine.sampling.EpochBatchSampler`: rank r of W takes samples
``[r*B, (r+1)*B)`` of each global batch of ``W*B``) with DistributedDataParallel: NCCL on GPUs
(one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. DDP averages the gradients, so a run on
W processes with B samples each follows the same trajectory as one process with ``W*B`` samples
(exactly for losses that are means over samples and without BatchNorm; with BatchNorm use
``--sync-bn`` on GPUs, or compare with gradient accumulation, which also normalises per
micro-batch of B). Rank 0 alone logs and checkpoints; evaluation shards the validation split and
merges the metric accumulators (confusion matrices and counts are summed, never averages of
averages), so every rank ends with the metrics of the whole split.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from mtlkit.errors import ConfigError


@dataclass
class DistContext:
    """Where this process stands: rank, world size, local rank, device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def under_torchrun() -> bool:
    """True when this process was started by ``torchrun`` / ``torch.distributed.run``."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init() -> DistContext:
    """Join the torchrun process group if launched by torchrun; pick the device.

    The device is ``cuda:LOCAL_RANK`` when CUDA is available (``MTLKIT_DEVICE=cpu`` forces the
    CPU), else the CPU. Backend: NCCL on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and os.environ.get("MTLKIT_DEVICE", "") != "cpu"
    if cuda and local >= torch.cuda.device_count():
        raise ConfigError(
            f"process with LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible",
            "start at most one process per GPU (--nproc / --nproc_per_node) "
            "or set MTLKIT_DEVICE=cpu",
        )
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    here = False
    if world > 1 and not dist.is_initialized():
        if cuda:
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
        here = True
    return DistContext(rank, world, local, device, here)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP-wrap ``model`` in a distributed run (the model itself in a single process).

    ``find_unused_parameters=True`` because some archs leave parameters out of a step's graph
    (auxiliary heads, task subsets); DDP then marks them ready itself.
    """
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def _ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager[Any]:
    """``model.no_sync()`` when ``skip`` and ``model`` is (a compiled) DDP, else a null context.

    Used for all but the last micro-batch of an accumulated step: gradients accumulate locally
    and are all-reduced once, by the last backward.
    """
    ddp = _ddp_of(model)
    if skip and ddp is not None:
        return ddp.no_sync()
    return contextlib.nullcontext()


def all_reduce_grads(params: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of parameters DDP does not manage (e.g. learnable loss weights).

    A missing gradient counts as zero, so every rank takes part with tensors of equal shapes.
    """
    if not ctx.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ctx.device)
        for p in params
    ])
    dist.all_reduce(flat)
    flat /= ctx.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.device).clone()
        offset += n


def average_floats(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of floats over the ranks (same keys on every rank), e.g. logged losses."""
    if not ctx.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: v / ctx.world for k, v in zip(keys, t.cpu().tolist(), strict=True)}


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each training forward, but each rank's forward then
    updates its own copy from its own samples; before evaluating, every rank must hold the
    model that rank 0 checkpoints.
    """
    if not ctx.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def shard_dataset(ds: Dataset, ctx: DistContext) -> Dataset:
    """Every ``world``-th sample for this rank (evaluation); shards differ by at most one."""
    if not ctx.distributed:
        return ds
    return Subset(ds, list(range(ctx.rank, len(ds), ctx.world)))  # type: ignore[arg-type]


def reduce_metrics(metrics: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """Merge every rank's accumulators (sums of counts) so all ranks hold the split's totals.

    The accumulators are gathered as objects and merged in rank order on every rank, so all
    ranks compute identical metrics.
    """
    if not ctx.distributed:
        return metrics
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, metrics)
    merged = gathered[0]
    for other in gathered[1:]:
        for t in merged:
            merged[t].merge(other[t])
    return merged


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Leave the process group if :func:`init` joined it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
