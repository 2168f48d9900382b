"""``auto``: every op runs its fastest correct implementation, chosen by measurement (issue 15).

The first call of an op for a *key* times every usable candidate and keeps the fastest one whose
result matches ``reference``; later calls with that key reuse the choice (an op with a single
usable candidate, e.g. ``hdc_conv`` on a CPU, runs it without measuring; implementations marked
experimental, not yet run on a GPU, are never candidates). The key is

    op | device name and capability | torch, CUDA, cuDNN versions | extension build hash |
    dtype | gradient needed or not | shape bucket

(:func:`make_key`; the bucket rounds the sizes that vary from batch to batch, batch and tokens,
up to a power of two and keeps the model's widths exact, see :func:`bucket`).

Measuring (:func:`measure`) runs each candidate on detached clones of the real inputs, never on
the inputs themselves, and draws its output gradient from a private generator, so the global RNG
is untouched (seeded CPU training stays bit-reproducible). One run checks the result: the
relative L2 error of the output, and of all input gradients together when a gradient is needed,
against ``reference`` must be within :data:`TOLERANCE` of the dtype; a candidate that is wrong
(or raises) is out. Then the default timer takes the median of several runs after a warm-up
(CUDA events on a GPU, ``time.perf_counter`` on a CPU), forward + backward when a gradient is
needed. Ties go to the earlier name of :func:`mtlkit.ops.implementations`.

Choices live in memory and in ``$MTLKIT_CACHE/ops-tuning.json`` (``~/.cache/mtlkit`` by default;
written atomically, merged with what other processes wrote; a corrupt or stale file is ignored
with one warning and rewritten). Nothing is timed while ``torch.compile`` traces, a CUDA graph
captures, or a functorch transform (vmap, grad) runs: then the cached or the static choice runs.

Under DDP (an initialized process group of more than one rank) a key that needs a gradient is
decided by rank 0, from its cache or by measuring, and broadcast, so every rank runs the same
implementation and the replicas never diverge; this is a collective call, made by every rank at
the same forward (the training step is lock-step). Keys without a gradient (evaluation, where
ranks may run different numbers of batches) are decided per rank without a collective. Only
rank 0 writes the JSON cache.

``MTLKIT_TUNE=0`` skips measuring and uses :func:`static_choice`, a table written from the
measured rows of ``benchmarks/RESULTS.md``: ``sdpa`` for both attention ops; ``cuda`` for
``ifb`` when a gradient is needed and ``reference`` otherwise; ``cuda`` for 16-bit ``hdc_conv``
training and ``reference`` for float32 and inference.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlkit.ops import impls
from mtlkit.ops._errors import ImplementationDeclined

CACHE_NAME = "ops-tuning.json"
CACHE_VERSION = 1

TOLERANCE = {
    torch.float64: 1e-6,
    torch.float32: 5e-3,   # TF32 convolutions / matmuls on a GPU are ~1e-3
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}
"""Largest relative L2 error against ``reference`` (output; input gradients together)."""

Timer = Callable[[str, Callable[[], Any], torch.device], float]
"""``timer(name, run, device) -> median milliseconds of run()`` (``name``: the candidate)."""


@dataclass
class Decision:
    """The choice for one key, with what it was based on."""

    op: str
    bucket: str
    dtype: str
    grad: bool
    device: str
    choice: str
    ranking: list[str]
    """Candidates that passed the check, fastest first (``choice`` is the first)."""
    times_ms: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    """Why a candidate was not timed: unusable, declined, failed, or rejected as inaccurate."""
    source: str = "measured"
    """``measured``, ``only candidate`` (nothing to measure), ``cache`` (the JSON file),
    ``static`` or ``rank 0`` (DDP broadcast)."""
    date: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Decision:
        """Parse a cached record (``ValueError`` when it is malformed)."""
        if not isinstance(obj, dict):
            raise ValueError("a record is not an object")
        try:
            d = cls(**{k: obj[k] for k in ("op", "bucket", "dtype", "grad", "device", "choice",
                                           "ranking")})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a record lacks a field ({exc})") from None
        d.times_ms = {str(k): float(v) for k, v in dict(obj.get("times_ms", {})).items()}
        d.notes = {str(k): str(v) for k, v in dict(obj.get("notes", {})).items()}
        d.date = str(obj.get("date", ""))
        if not (isinstance(d.ranking, list) and d.ranking
                and all(isinstance(n, str) for n in d.ranking) and d.choice == d.ranking[0]):
            raise ValueError("a record's ranking is malformed")
        return d


# --------------------------------------------------------------------------- keys
def _pow2(n: int) -> int:
    """n rounded up to a power of two (0 stays 0)."""
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def bucket(op: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """The shape bucket of a call: varying sizes rounded up to a power of two, widths exact."""
    if op == "bfe_attention":
        q, feats = args[0], args[1]
        B, Nq, E = q.shape
        _, T, C, H, W = feats.shape
        pool, heads = kwargs["pool"], kwargs["heads"]
        Nk = T * (H // pool) * (W // pool)
        return (f"B{_pow2(B)} Nq{_pow2(Nq)} Nk{_pow2(Nk)} T{T} C{C} E{E} heads{heads} "
                f"pool{pool}")
    if op == "tpp_attention":
        q, v, mix_weight = args[0], args[2], args[3]
        B, T, N, D = q.shape
        return f"B{_pow2(B)} N{_pow2(N)} T{T} D{D} Dv{v.shape[-1]} M{mix_weight.shape[0]}"
    if op == "ifb":
        B, N, c = args[1].shape
        return f"B{_pow2(B)} N{_pow2(N)} c{c} iters{kwargs['iters']} {kwargs['variant']}"
    if op == "hdc_conv":
        x, pw = args[0], args[3]
        B, C, H, W = x.shape
        chans = "-".join(str(n) for n in [C, *(w.shape[0] for w in pw)])
        dil = ",".join(str(d) for d in kwargs["dilations"])
        return f"B{_pow2(B)} HW{_pow2(H * W)} C{chans} d{dil}"
    return "-"


@functools.cache
def device_name(device: torch.device) -> str:
    """``cpu`` or ``<GPU name> sm_<major><minor>``."""
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


_BUILD: str | None = None


def extension_build() -> str:
    """A hash of the compiled extension's file (``none`` without one)."""
    global _BUILD
    if _BUILD is None:
        mod = sys.modules.get("mtlkit._C")
        path = getattr(mod, "__file__", None) if mod is not None else None
        if not path or not impls.HAS_CUDA_OPS:
            _BUILD = "none"
        else:
            try:
                _BUILD = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
            except OSError:
                _BUILD = "unreadable"
    return _BUILD


@functools.cache
def software() -> str:
    """torch, CUDA and cuDNN versions and the extension build."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (f"torch {torch.__version__} cuda {torch.version.cuda} cudnn {cudnn} "
            f"ext {extension_build()}")


def make_key(op: str, device: torch.device, dtype: torch.dtype, grad: bool,
             bucket_: str) -> str:
    """The cache key of a call (see the module docstring)."""
    dt = str(dtype).removeprefix("torch.")
    return " | ".join([op, device_name(device), software(), dt,
                       "grad" if grad else "no grad", bucket_])


# --------------------------------------------------------------------------- state
_LOCK = threading.RLock()
_MEMORY: dict[str, Decision] = {}
_FILE: dict[str, Any] = {"path": None, "entries": {}}
_FORCE = threading.local()
_timer: Timer | None = None


def cache_path() -> Path:
    """``$MTLKIT_CACHE/ops-tuning.json`` (``~/.cache/mtlkit`` when unset)."""
    root = os.environ.get("MTLKIT_CACHE") or "~/.cache/mtlkit"
    return Path(root).expanduser() / CACHE_NAME


def reset() -> None:
    """Forget every choice made in this process (the JSON file is read again when needed)."""
    with _LOCK:
        _MEMORY.clear()
        _FILE.update(path=None, entries={})


def decisions() -> dict[str, Decision]:
    """The choices made or loaded in this process, by key."""
    with _LOCK:
        return dict(_MEMORY)


@contextmanager
def use_timer(timer: Timer | None) -> Iterator[None]:
    """Time candidates with ``timer`` (tests inject one; None restores the default)."""
    global _timer
    old, _timer = _timer, timer
    try:
        yield
    finally:
        _timer = old


@contextmanager
def retuning() -> Iterator[None]:
    """Measure every key met in the block again, even with a cached choice or ``MTLKIT_TUNE=0``
    (``mtlkit profile --tune``); each key is measured once per block."""
    old = getattr(_FORCE, "seen", None)
    _FORCE.seen = set()
    try:
        yield
    finally:
        _FORCE.seen = old


def tuning_enabled() -> bool:
    """False under ``MTLKIT_TUNE=0`` (the static table is used)."""
    return os.environ.get("MTLKIT_TUNE", "1") != "0"


def can_measure(tensors: Sequence[Tensor]) -> bool:
    """Whether timing is allowed now: not while compiling, capturing or under functorch."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if any(t.is_cuda for t in tensors) and torch.cuda.is_current_stream_capturing():
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    return all(type(t) in (Tensor, torch.nn.Parameter) and t.device.type != "meta"
               for t in tensors)


# --------------------------------------------------------------------------- the JSON cache
def _load_file() -> dict[str, Any]:
    """The entries of the JSON cache (read once per path; a bad file warns once)."""
    path = cache_path()
    with _LOCK:
        if _FILE["path"] != path:
            _FILE.update(path=path, entries=_read(path, warn=True))
        return _FILE["entries"]


def _read(path: Path, warn: bool) -> dict[str, Any]:
    if not path.exists():
        return {}
    problem = None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            problem = "it is not an mtlkit tuning cache"
        elif data.get("version") != CACHE_VERSION:
            problem = f"it has version {data.get('version')!r}, this mtlkit writes {CACHE_VERSION}"
        else:
            entries = {}
            for key, rec in data["entries"].items():
                try:
                    entries[key] = Decision.from_json(rec).to_json()
                except ValueError:
                    problem = "some of its records are malformed"
            if problem is None:
                return entries
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"it cannot be read ({exc})"
    if warn:
        warnings.warn(f"ignoring the op tuning cache {path}: {problem}; it will be rewritten",
                      RuntimeWarning, stacklevel=4)
    return {}


def _save(key: str, decision: Decision) -> None:
    """Merge ``decision`` into the JSON cache (tmp file + rename); a failure warns once."""
    from mtlkit.errors import OutputError
    from mtlkit.utils import atomic_write_json

    path = cache_path()
    with _LOCK:
        entries = _load_file()
        entries[key] = decision.to_json()
        merged = {**_read(path, warn=False), **entries}
        try:
            atomic_write_json(path, {"version": CACHE_VERSION, "entries": merged})
        except OutputError as exc:  # atomic_write_json reports every OSError as one
            if not _FILE.get("write_failed"):
                _FILE["write_failed"] = True
                warnings.warn(f"cannot write the op tuning cache {path} ({exc}); choices are "
                              "kept for this process only", RuntimeWarning, stacklevel=4)


# --------------------------------------------------------------------------- static table
def static_choice(op: str, dtype: torch.dtype, grad: bool) -> str:
    """The choice without measuring (``MTLKIT_TUNE=0``), from benchmarks/RESULTS.md (H100)."""
    if op in ("bfe_attention", "tpp_attention"):
        return "sdpa"
    if op == "ifb":
        return "cuda" if grad else "reference"
    if op == "hdc_conv":
        return "cuda" if grad and dtype in impls.HALF_DTYPES else "reference"
    return "reference"


# --------------------------------------------------------------------------- measuring
def _clone(x: Any, grad: bool) -> Any:
    if isinstance(x, Tensor):
        c = x.detach().clone()
        return c.requires_grad_(grad and x.requires_grad)
    if isinstance(x, (list, tuple)):
        return [_clone(t, grad) for t in x]
    return x


def _leaves(args: Sequence[Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for a in args:
        if isinstance(a, Tensor):
            if a.requires_grad:
                out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, Tensor) and t.requires_grad)
    return out


def _flat(outputs: Sequence[Tensor | None], leaves: Sequence[Tensor]) -> Tensor:
    parts = [(g if g is not None else torch.zeros_like(leaf)).reshape(-1).double()
             for g, leaf in zip(outputs, leaves, strict=True)]
    return torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64)


def rel_l2(x: Tensor, ref: Tensor) -> float:
    """``||x - ref|| / ||ref||`` in float64 (0 when both are zero)."""
    x, ref = x.detach().double(), ref.detach().double()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def default_timer(name: str, run: Callable[[], Any], device: torch.device) -> float:
    """Median milliseconds of ``run()``: CUDA events after 3 warm-up runs (10 timed runs) on a
    GPU, ``time.perf_counter`` after 1 warm-up run (3 to 5 timed runs, fewer past ~1 s) on a
    CPU."""
    if device.type == "cuda":
        for _ in range(3):
            run()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(10):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    run()
    times = []
    t_end = time.perf_counter() + 1.0
    while len(times) < 5 and (len(times) < 3 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(op: str, candidates: Sequence[impls.Implementation], args: Sequence[Any],
            kwargs: dict[str, Any], grad: bool, device: torch.device,
            timer: Timer | None = None, notes: dict[str, str] | None = None
            ) -> tuple[list[str], dict[str, float], dict[str, str]]:
    """Check and time ``candidates`` on clones of ``args``; returns (ranking, times, notes).

    ``reference`` runs first and is the truth; without it (or when it fails) the others are
    timed unchecked (noted).
    """
    timer = timer or _timer or default_timer
    notes = dict(notes or {})
    times: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)  # private: the global RNG is never drawn from
    truth: tuple[Tensor, Tensor | None] | None = None
    grad_out: Tensor | None = None
    order = sorted(candidates, key=lambda i: i.name != "reference")
    for impl in order:
        cargs = [_clone(a, grad) for a in args]
        leaves = _leaves(cargs) if grad else []

        def step(impl: impls.Implementation = impl, cargs: list[Any] = cargs,
                 leaves: list[Tensor] = leaves) -> tuple[Tensor, Tensor | None]:
            nonlocal grad_out
            if not grad:
                with torch.no_grad():
                    return impl.fn(*cargs, **kwargs), None
            with torch.enable_grad():
                out = impl.fn(*cargs, **kwargs)
                if grad_out is None:
                    grad_out = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
                grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
            return out, _flat(grads, leaves)

        try:
            out, g = step()
        except ImplementationDeclined as exc:
            notes[impl.name] = f"declined: {exc}"
            continue
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            notes[impl.name] = f"failed: {str(exc).splitlines()[0][:160]}"
            continue
        if impl.name == "reference":
            truth = (out.detach(), None if g is None else g.detach())
        elif truth is not None:
            err = rel_l2(out, truth[0])
            if g is not None and truth[1] is not None:
                err = max(err, rel_l2(g, truth[1]))
            tol = TOLERANCE.get(out.dtype, 5e-2)
            if not err <= tol:
                notes[impl.name] = (f"rejected: differs from reference (relative error "
                                    f"{err:.1e} > {tol:.0e})")
                continue
        else:
            notes.setdefault(impl.name, "unchecked: reference did not run")
        try:
            times[impl.name] = float(timer(impl.name, step, device))
        except (RuntimeError, NotImplementedError) as exc:
            notes[impl.name] = f"failed: {str(exc).splitlines()[0][:160]}"
        del out, g
    names = [i.name for i in candidates]
    ranking = sorted(times, key=lambda n: (times[n], names.index(n)))
    return ranking, times, notes


# --------------------------------------------------------------------------- the policy
def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def candidates(op: str, args: Sequence[Any], kwargs: dict[str, Any], device: torch.device
               ) -> tuple[list[impls.Implementation], dict[str, str]]:
    """The implementations usable here that take these arguments, and why the others don't."""
    usable, notes = [], {}
    for impl in impls.all_implementations(op):
        why = impl.unavailable(device) or impl.declines(*args, **kwargs)
        if why is None and impl.experimental:
            why = "experimental (not yet run on a GPU); name it to use it"
        if why:
            notes[impl.name] = f"not a candidate: {why}"
        else:
            usable.append(impl)
    return usable, notes


def decide(op: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Decision:
    """The :class:`Decision` of ``auto`` for this call (measuring on a first call)."""
    tensors = [t for t in _flat_tensors(args)]
    device = tensors[0].device
    dtype = tensors[0].dtype
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    bkt = bucket(op, args, kwargs)
    key = make_key(op, device, dtype, grad, bkt)
    forced = getattr(_FORCE, "seen", None)
    if forced is not None and key not in forced and can_measure(tensors):
        forced.add(key)
        return _measure_and_store(op, key, bkt, args, kwargs, device, dtype, grad, force=True)
    if not tuning_enabled() and forced is None:
        return _static(op, bkt, args, kwargs, device, dtype, grad)
    with _LOCK:
        hit = _MEMORY.get(key)
    if hit is not None:
        return hit
    measurable = can_measure(tensors)
    if grad and _distributed():
        if not measurable:  # no collective inside a compiled region: every rank, same table
            return _static(op, bkt, args, kwargs, device, dtype, grad)
        return _from_rank0(op, key, bkt, args, kwargs, device, dtype, grad)
    cached = _load_file().get(key)
    if cached is not None:
        d = Decision.from_json(cached)
        d.source = "cache"
        with _LOCK:
            _MEMORY[key] = d
        return d
    if not measurable:
        return _static(op, bkt, args, kwargs, device, dtype, grad)
    return _measure_and_store(op, key, bkt, args, kwargs, device, dtype, grad)


def _flat_tensors(args: Sequence[Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, Tensor))
    return out


def _static(op: str, bkt: str, args: Sequence[Any], kwargs: dict[str, Any],
            device: torch.device, dtype: torch.dtype, grad: bool) -> Decision:
    usable, notes = candidates(op, args, kwargs, device)
    names = [i.name for i in usable]
    first = static_choice(op, dtype, grad)
    ranking = [n for n in dict.fromkeys([first, "reference"]) if n in names] or names
    return Decision(op, bkt, str(dtype).removeprefix("torch."), grad, device_name(device),
                    ranking[0], ranking, {}, notes, source="static")


def _measure_and_store(op: str, key: str, bkt: str, args: Sequence[Any],
                       kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype,
                       grad: bool, force: bool = False) -> Decision:
    """Measure the candidates (a lone candidate only when ``force``), remember and cache."""
    usable, notes = candidates(op, args, kwargs, device)
    if len(usable) == 1 and not force:  # nothing to choose between: no run at all
        ranking, times, source = [usable[0].name], {}, "only candidate"
    else:
        ranking, times, notes = measure(op, usable, args, kwargs, grad, device, notes=notes)
        source = "measured"
    if not ranking:  # nothing could be checked and timed: the reference, as the contract
        ranking = ["reference"]
    d = Decision(op, bkt, str(dtype).removeprefix("torch."), grad, device_name(device),
                 ranking[0], ranking, times, notes, source=source,
                 date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    with _LOCK:
        _MEMORY[key] = d
    if not _distributed() or torch.distributed.get_rank() == 0:
        _save(key, d)
    return d


def _from_rank0(op: str, key: str, bkt: str, args: Sequence[Any], kwargs: dict[str, Any],
                device: torch.device, dtype: torch.dtype, grad: bool) -> Decision:
    """Rank 0 decides (its cache or a measurement) and broadcasts; every rank keeps it."""
    dist = torch.distributed
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        cached = _load_file().get(key)
        if cached is not None:
            payload[0] = cached
        else:
            payload[0] = _measure_and_store(op, key, bkt, args, kwargs, device, dtype,
                                            grad).to_json()
    dist.broadcast_object_list(payload, src=0)
    d = Decision.from_json(payload[0])
    d.source = "rank 0" if dist.get_rank() != 0 else d.source
    with _LOCK:
        _MEMORY[key] = d
    return d
