"""Which implementation an op call runs: ``use()``, then ``MTLKIT_IMPL``, then ``auto``.

- :func:`use` (a context manager, e.g. ``with mtlkit.ops.use(bfe_attention="sdpa"):``) names an
  implementation per op for the calls inside it (``"auto"`` restores the default);
- else the environment variable ``MTLKIT_IMPL="bfe_attention=sdpa,hdc_conv=cuda"`` (read on
  every call);
- else ``auto`` (:mod:`mtlkit.ops.tuning`): the fastest correct implementation, measured.

An implementation named explicitly that cannot run the call (a kernel on a CPU tensor, under
``MTLKIT_KERNELS=0``, or declining the arguments, e.g. shared memory or a head dim) does not
fail the call: its ``fallback`` (``cuda_tc`` -> ``cuda``, ``cuda_band`` -> ``cuda``) or the
``auto`` choice runs instead, with one warning per op, implementation and shape bucket. Under
``auto`` a chosen kernel that declines a call of its bucket (say, a misaligned view) hands over
to the next one of the measured ranking, again with one warning per bucket.

:func:`recording` collects what ran (``mtlkit profile --arch`` prints it).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.ops import impls, tuning
from mtlkit.ops._errors import ImplementationDeclined

ENV = "MTLKIT_IMPL"


class ChoiceError(ConfigError, ValueError):
    """An unknown op or implementation name in ``use()`` or ``MTLKIT_IMPL`` (a ``ValueError``,
    and a user error: the CLI prints it as one line and exits with status 2)."""


_USE: ContextVar[dict[str, str]] = ContextVar("mtlkit_ops_use", default={})  # noqa: B039
_WARNED: set[tuple[str, ...]] = set()
_PARSED: dict[str, dict[str, str]] = {}


def _check_choice(op: str, name: str, where: str) -> None:
    if op not in impls.OPS:
        raise ChoiceError(f"{where}: unknown op {op!r}", f"the ops are {', '.join(impls.OPS)}")
    if name != "auto" and name not in impls.implementations(op):
        raise ChoiceError(f"{where}: {op} has no implementation {name!r}",
                          f"choose one of {', '.join([*impls.implementations(op), 'auto'])}")


@contextmanager
def use(**choices: str) -> Iterator[None]:
    """Run each named op on the named implementation inside the block (``"auto"``: measure).

    ``with mtlkit.ops.use(bfe_attention="sdpa", hdc_conv="reference"): ...``; nests (the inner
    block wins for the ops it names) and overrides ``MTLKIT_IMPL``. Unknown op or
    implementation names raise :class:`ChoiceError` (a ``ValueError``) naming the choices.
    """
    for op, name in choices.items():
        _check_choice(op, name, "use()")
    token = _USE.set({**_USE.get(), **choices})
    try:
        yield
    finally:
        _USE.reset(token)


def env_choices() -> dict[str, str]:
    """``MTLKIT_IMPL`` parsed (:class:`ChoiceError` naming the problem for a bad value)."""
    text = os.environ.get(ENV, "").strip()
    if text not in _PARSED:
        out: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            op, sep, name = (s.strip() for s in item.partition("="))
            if not sep or not name:
                raise ChoiceError(f"bad {ENV}={text!r}", "write op=implementation pairs "
                                  "separated by commas, e.g. bfe_attention=sdpa,hdc_conv=cuda")
            _check_choice(op, name, ENV)
            out[op] = name
        _PARSED[text] = out
    return _PARSED[text]


def requested(op: str) -> tuple[str, str]:
    """``(implementation, where it was named)`` for ``op``: ``use()``, ``MTLKIT_IMPL`` or
    ``("auto", "auto")``."""
    name = _USE.get().get(op)
    if name is not None and name != "auto":
        return name, "use()"
    if name is None:
        name = env_choices().get(op)
        if name is not None and name != "auto":
            return name, ENV
    return "auto", "auto"


# --------------------------------------------------------------------------- recording
@dataclass(frozen=True)
class Ran:
    """One (op, bucket, dtype, gradient, implementation) that ran, and why it was chosen."""

    op: str
    bucket: str
    dtype: str
    grad: bool
    impl: str
    source: str


_RECORDS: list[Counter[Ran]] = []


@contextmanager
def recording() -> Iterator[Counter[Ran]]:
    """Count the implementations that run in the block: ``{Ran(...): calls}``."""
    log: Counter[Ran] = Counter()
    _RECORDS.append(log)
    try:
        yield log
    finally:
        _RECORDS.remove(log)


@torch.compiler.disable
def _record(op: str, args: Sequence[Any], kwargs: dict[str, Any], name: str, source: str,
            decision: tuning.Decision | None) -> None:
    if decision is not None:
        ran = Ran(op, decision.bucket, decision.dtype, decision.grad, name, source)
    else:
        t = next(x for x in tuning._flat_tensors(args))
        grad = torch.is_grad_enabled() and any(x.requires_grad
                                               for x in tuning._flat_tensors(args))
        ran = Ran(op, tuning.bucket(op, args, kwargs), str(t.dtype).removeprefix("torch."),
                  grad, name, source)
    for log in _RECORDS:
        log[ran] += 1


# --------------------------------------------------------------------------- running
def reset_warnings() -> None:
    """Warn again about fallbacks already reported in this process (tests)."""
    from mtlkit.ops import _attention

    _WARNED.clear()
    _attention._WARNED.clear()


def _warn_once(key: tuple[str, ...], message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@torch.compiler.disable
def _plan(op: str, args: Sequence[Any], kwargs: dict[str, Any]
          ) -> tuple[list[str], str, tuning.Decision | None]:
    """The implementations to try in order, where the first was named, and auto's decision.

    Never traced by ``torch.compile``: it runs eagerly, between graphs, so a measurement
    never happens while compiling.
    """
    name, source = requested(op)
    if name == "auto":
        decision = tuning.decide(op, args, kwargs)
        plan = _runnable(op, [*decision.ranking, "reference"], args, kwargs)
        if plan[0] != decision.choice:
            why = _why_not(op, decision.choice, args, kwargs)
            _warn_once((op, decision.choice, "auto", decision.bucket, str(why)),
                       f"mtlkit.ops.{op}: {decision.choice!r}, auto's choice for "
                       f"{decision.bucket}, cannot run this call: {why}; running {plan[0]!r} "
                       "instead")
        return plan, f"auto: {decision.source}", decision
    impl = impls.get(op, name)
    device = next(t for t in tuning._flat_tensors(args)).device
    why = impl.unavailable(device) or impl.declines(*args, **kwargs)
    if why is None:
        return [name], source, None
    chain = _fallbacks(op, impl, args, kwargs)
    _warn_once((op, name, tuning.bucket(op, args, kwargs)),
               f"mtlkit.ops.{op}: implementation {name!r} (from {source}) cannot run this "
               f"call: {why}; running {chain[0]!r} instead")
    return chain, f"{source}, fallback", None


def _why_not(op: str, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """Why implementation ``name`` cannot run this call now (None when it can)."""
    if name not in impls.implementations(op):
        return "no such implementation (a stale cached choice)"
    impl = impls.get(op, name)
    device = next(t for t in tuning._flat_tensors(args)).device
    return impl.unavailable(device) or impl.declines(*args, **kwargs)


def _runnable(op: str, names: Sequence[str], args: Sequence[Any],
              kwargs: dict[str, Any]) -> list[str]:
    """``names`` (deduplicated) that can run this call now, e.g. not a kernel cached before
    ``MTLKIT_KERNELS=0`` or one declining this member of its shape bucket."""
    return [n for n in dict.fromkeys(names) if _why_not(op, n, args, kwargs) is None]


@torch.compiler.disable
def _fallbacks(op: str, impl: impls.Implementation, args: Sequence[Any],
               kwargs: dict[str, Any]) -> list[str]:
    """What runs when ``impl`` cannot: its fallback chain (``cuda_tc`` -> ``cuda``), then the
    ``auto`` ranking, then ``reference``."""
    chain: list[str] = []
    nxt = impl.fallback
    while nxt is not None and nxt not in chain:
        chain.append(nxt)
        nxt = impls.get(op, nxt).fallback
    ranking = tuning.decide(op, args, kwargs).ranking
    return [n for n in _runnable(op, [*chain, *ranking, "reference"], args, kwargs)
            if n != impl.name]


def call(op: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Tensor:
    """Run ``op`` on validated arguments of one dtype with the chosen implementation."""
    plan, source, decision = _plan(op, args, kwargs)
    i = 0
    while True:
        name = plan[i]
        try:
            out = impls.get(op, name).fn(*args, **kwargs)
        except ImplementationDeclined as exc:
            if i + 1 == len(plan):
                more = _fallbacks(op, impls.get(op, name), args, kwargs)
                plan = plan + [n for n in more if n not in plan]
            _warn_once((op, name, "declined", tuning.bucket(op, args, kwargs)),
                       f"mtlkit.ops.{op}: implementation {name!r} declined this call ({exc}); "
                       f"running {plan[i + 1]!r} instead")
            i += 1
            continue
        if _RECORDS:
            _record(op, args, kwargs, name, source, decision)
        return out
