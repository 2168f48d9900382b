"""Whole-model throughput and tuning: ``mtlkit profile --arch ARCH [--tune]``.

:func:`profile_arch` builds the arch for a dataset's task set, feeds random images and targets,
and times one training step (forward, losses, backward, AdamW step) and one inference forward
under each *setting* of the ops' implementations:

- ``auto``: the default, each op's fastest correct implementation (:mod:`mtlkit.ops.tuning`);
- ``cuda kernels``: every op on its ``cuda`` implementation where it can run (the default before
  issue 15), GPU only;
- ``reference``: every op on ``reference``, GPU only (on a CPU, ``auto`` already measures
  ``reference`` against ``sdpa`` op by op).

Each row lists which implementation each op ran (:func:`mtlkit.ops.dispatch.recording`).
:func:`tune_arch` runs one training step and one inference forward with every op measured
afresh and returns the candidates' times per op and shape bucket.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mtlkit.profiling import format_table, peak_memory_mib, time_call

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)`` after each timed or tuning run."""


@contextmanager
def kernels(enabled: bool) -> Iterator[None]:
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


def settings(device: torch.device) -> dict[str, dict[str, str]]:
    """The implementation settings profiled on ``device``: label -> ``mtlkit.ops.use`` kwargs."""
    from mtlkit.ops import OPS

    if device.type != "cuda":
        return {"auto": {}}
    return {"auto": {}, "cuda kernels": {op: "cuda" for op in OPS},
            "reference": {op: "reference" for op in OPS}}


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


def _steps(arch: str, dataset: str, backbone: str, batch_size: int,
           size: tuple[int, int] | None, amp: bool, dev: torch.device
           ) -> tuple[Callable[[], None], Callable[[], None], tuple[int, int]]:
    """(train_step, infer, size) of a freshly built model on random inputs."""
    from mtlkit.data import dataset_info
    from mtlkit.engine.evaluator import _autocast
    from mtlkit.engine.trainer import compute_losses
    from mtlkit.models import create_model
    from mtlkit.models.backbones import input_size_hint
    from mtlkit.tasks import get_task

    info = dataset_info(dataset)
    hw = tuple(size or info["default_size"])
    specs = {t: get_task(t, info.get("num_classes", {}).get(t)) for t in info["tasks"]}
    gen = torch.Generator().manual_seed(0)
    with input_size_hint(hw):
        model = create_model(arch, {t: s.out_channels for t, s in specs.items()}, backbone)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image = torch.randn(batch_size, 3, *hw, generator=gen).to(dev)
    batch = _targets(specs, batch_size, hw, dev, gen)
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

    return train_step, infer, hw


def _ticking(fn: Callable[[], None], tick: Callable[[str], None], what: str
             ) -> Callable[[], None]:
    def run() -> None:
        fn()
        tick(what)

    return run


def profile_arch(arch: str, *, dataset: str = "synthetic-nyud", backbone: str = "tiny",
                 batch_size: int = 8, size: tuple[int, int] | None = None, amp: bool = False,
                 warmup: int = 3, repeats: int = 10, device: str | None = None,
                 only: list[str] | None = None, progress: Progress | None = None) -> list[dict]:
    """One row per setting (:func:`settings`, or those named in ``only``).

    Row keys: ``arch, setting, device, batch_size, size, amp, train_ms, train_images_per_s,
    infer_ms, infer_images_per_s, train_peak_mib, infer_peak_mib`` (None on a CPU) and
    ``implementations``: ``[{op, bucket, dtype, grad, impl, source, calls}]``, what ran.
    """
    from mtlkit.ops import dispatch, use

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = amp and dev.type == "cuda"  # bf16 autocast is a GPU setting (a no-op on the CPU)
    train_step, infer, hw = _steps(arch, dataset, backbone, batch_size, size, amp, dev)
    chosen = {k: v for k, v in settings(dev).items() if only is None or k in only}
    mem_runs = 2 if dev.type == "cuda" else 0
    total = len(chosen) * 2 * (warmup + repeats) + len(chosen) * mem_runs
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    rows = []
    for label, choices in chosen.items():
        with use(**choices), dispatch.recording() as log:
            train = _ticking(train_step, tick, f"{label}: train step")
            inf = _ticking(infer, tick, f"{label}: inference")
            t_train = time_call(train, dev, warmup, repeats)
            t_infer = time_call(inf, dev, warmup, repeats)
            rows.append({
                "arch": arch, "setting": label, "device": str(dev), "batch_size": batch_size,
                "size": list(hw), "amp": amp,
                "train_ms": t_train, "train_images_per_s": batch_size / t_train * 1e3,
                "infer_ms": t_infer, "infer_images_per_s": batch_size / t_infer * 1e3,
                "train_peak_mib": peak_memory_mib(train, dev),
                "infer_peak_mib": peak_memory_mib(inf, dev),
                "implementations": [
                    {"op": r.op, "bucket": r.bucket, "dtype": r.dtype, "grad": r.grad,
                     "impl": r.impl, "source": r.source, "calls": n}
                    for r, n in sorted(log.items(), key=lambda kv: (kv[0].op, not kv[0].grad,
                                                                     kv[0].bucket))],
            })
    return rows


def tune_arch(arch: str, *, dataset: str = "synthetic-nyud", backbone: str = "tiny",
              batch_size: int = 8, size: tuple[int, int] | None = None, amp: bool = False,
              device: str | None = None) -> list[dict]:
    """Measure every op the arch runs (one training step and one inference forward), afresh.

    Returns one row per (op, shape bucket, dtype, gradient): ``{op, bucket, dtype, grad,
    choice, times_ms: {impl: ms}, notes: {impl: why not}}``; the choices are cached
    (``$MTLKIT_CACHE/ops-tuning.json``) for later runs.
    """
    from mtlkit.ops import dispatch, tuning

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_step, infer, _ = _steps(arch, dataset, backbone, batch_size, size, amp, dev)
    with tuning.retuning(), dispatch.recording() as log:
        train_step()
        infer()
    seen = {(r.op, r.bucket, r.dtype, r.grad) for r in log}
    rows = []
    for d in tuning.decisions().values():
        if (d.op, d.bucket, d.dtype, d.grad) in seen and d.device == tuning.device_name(dev):
            rows.append({"op": d.op, "bucket": d.bucket, "dtype": d.dtype, "grad": d.grad,
                         "choice": d.choice, "source": d.source, "times_ms": d.times_ms,
                         "notes": d.notes})
    return sorted(rows, key=lambda r: (r["op"], not r["grad"], r["bucket"]))


# --------------------------------------------------------------------------- tables
def arch_table(rows: list[dict]) -> str:
    """Throughput of :func:`profile_arch` rows, one line per setting (plain text)."""
    r0 = rows[0]
    title = (f"{r0['arch']}: batch {r0['batch_size']}, {r0['size'][0]}x{r0['size'][1]}, "
             f"{r0['device']}{', bf16 autocast' if r0['amp'] else ''}")
    headers = ["setting", "train img/s", "infer img/s", "train peak MiB", "infer peak MiB"]
    body = []
    for r in rows:
        mem = [f"{m:.0f}" if m is not None else "n/a (CPU)"
               for m in (r["train_peak_mib"], r["infer_peak_mib"])]
        body.append([r["setting"], f"{r['train_images_per_s']:.1f}",
                     f"{r['infer_images_per_s']:.1f}", *mem])
    return f"{title}\n{format_table(headers, body, right=headers[1:])}"


def implementations_table(rows: list[dict]) -> str:
    """Which implementation each op ran, per setting (plain text)."""
    headers = ["setting", "op", "shape bucket", "dtype", "grad", "implementation", "chosen by",
               "calls"]
    body = [[r["setting"], i["op"], i["bucket"], i["dtype"], "yes" if i["grad"] else "no",
             i["impl"], i["source"], i["calls"]] for r in rows for i in r["implementations"]]
    if not body:
        return "implementations: this arch calls none of the mtlkit ops"
    return "implementations that ran\n" + format_table(headers, body, right=["calls"])


def tune_table(rows: list[dict]) -> str:
    """The candidates' median times per op and shape bucket, and the choice (plain text)."""
    from mtlkit.ops import implementations

    if not rows:
        return "tuning: this arch calls none of the mtlkit ops"
    headers = ["op", "shape bucket", "dtype", "grad", "candidate", "median ms", "choice",
               "note"]
    body = []
    for r in rows:
        named = {*r["times_ms"], *r["notes"]}
        for name in [n for n in implementations(r["op"]) if n in named]:
            ms = r["times_ms"].get(name)
            body.append([r["op"], r["bucket"], r["dtype"], "yes" if r["grad"] else "no", name,
                         "-" if ms is None else f"{ms:.3f}",
                         "<- auto" if name == r["choice"] else "", r["notes"].get(name, "")])
    return "tuning of the ops (median of the measured runs)\n" + format_table(headers, body,
                                                                      right=["median ms"])
