"""Whole-model throughput: training and inference images/s and peak memory, kernels on and off.

``mtlkit profile --arch ARCH [--batch-size B --size HxW]`` builds the arch for a dataset's task
set, feeds random images and targets, and times one training step (forward, losses, backward,
AdamW step) and one inference forward, once with the CUDA kernels and once with
``MTLKIT_KERNELS=0`` (the PyTorch references). On a CPU both rows run the references.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import torch

from mtlkit.profiling import peak_memory_mib, time_call


@contextmanager
def kernels(enabled: bool):
    """Set ``MTLKIT_KERNELS`` for the duration (the ops read it on every call)."""
    old = os.environ.get("MTLKIT_KERNELS")
    os.environ["MTLKIT_KERNELS"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MTLKIT_KERNELS", None)
        else:
            os.environ["MTLKIT_KERNELS"] = old


def _targets(specs: dict[str, Any], b: int, size: tuple[int, int], device: torch.device,
             gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, w = size
    out: dict[str, torch.Tensor] = {}
    for t, s in specs.items():
        if s.kind == "labels":
            out[t] = torch.randint(0, s.out_channels, (b, h, w), generator=gen)
        elif t == "depth":
            out[t] = torch.rand(b, 1, h, w, generator=gen) + 0.5
        elif t == "normals":
            out[t] = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1)
        else:
            out[t] = (torch.rand(b, 1, h, w, generator=gen) > 0.9).float()
    return {k: v.to(device) for k, v in out.items()}


def profile_arch(arch: str, *, dataset: str = "synthetic-nyud", backbone: str = "tiny",
                 batch_size: int = 8, size: tuple[int, int] | None = None, amp: bool = False,
                 warmup: int = 3, repeats: int = 10, device: str | None = None) -> list[dict]:
    """Rows ``{"kernels", "train_images_per_s", "infer_images_per_s", "train_peak_mib", ...}``."""
    from mtlkit.data import dataset_info
    from mtlkit.engine.evaluator import _autocast
    from mtlkit.engine.trainer import compute_losses
    from mtlkit.models import create_model
    from mtlkit.models.backbones import input_size_hint
    from mtlkit.tasks import get_task

    info = dataset_info(dataset)
    size = tuple(size or info["default_size"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    specs = {t: get_task(t, info.get("num_classes", {}).get(t)) for t in info["tasks"]}
    gen = torch.Generator().manual_seed(0)
    with input_size_hint(size):
        model = create_model(arch, {t: s.out_channels for t, s in specs.items()}, backbone)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image = torch.randn(batch_size, 3, *size, generator=gen).to(dev)
    batch = _targets(specs, batch_size, size, dev, gen)
    aux_weight = float(getattr(model, "aux_weight", 1.0))

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, amp):
            out = model(image)
        losses = compute_losses(out, batch, specs, aux_weight)
        total = sum(specs[t].weight * v for t, v in losses.items())
        total = total + sum(out.get("extra_losses", {}).values())
        total.backward()
        opt.step()

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with _autocast(dev, amp):
            model(image)

    rows = []
    for enabled in (True, False):
        with kernels(enabled):
            t_train = time_call(train_step, dev, warmup, repeats)
            t_infer = time_call(infer, dev, warmup, repeats)
            rows.append({
                "arch": arch, "kernels": "on" if enabled else "off (reference)",
                "device": str(dev), "batch_size": batch_size, "size": list(size), "amp": amp,
                "train_ms": t_train, "train_images_per_s": batch_size / t_train * 1e3,
                "infer_ms": t_infer, "infer_images_per_s": batch_size / t_infer * 1e3,
                "train_peak_mib": peak_memory_mib(train_step, dev),
                "infer_peak_mib": peak_memory_mib(infer, dev),
            })
    return rows


def arch_table(rows: list[dict]) -> Any:
    """A rich table of :func:`profile_arch` rows."""
    from rich.table import Table

    r0 = rows[0]
    table = Table(title=f"{r0['arch']}: batch {r0['batch_size']}, {r0['size'][0]}x{r0['size'][1]}"
                        f", {r0['device']}{', bf16 autocast' if r0['amp'] else ''}")
    for col in ("kernels", "train img/s", "infer img/s", "train peak MiB", "infer peak MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        mem = [f"{m:.0f}" if m is not None else "n/a (CPU)"
               for m in (r["train_peak_mib"], r["infer_peak_mib"])]
        table.add_row(r["kernels"], f"{r['train_images_per_s']:.1f}",
                      f"{r['infer_images_per_s']:.1f}", *mem)
    return table
