"""Loss weighting: how per-task losses are combined into one scalar (LibMTL-style).

Every weighting is a small class with one ``combine`` method and a state that checkpoints carry:

``combine(losses: dict[str, Tensor], *, step: int, shared_params: list[Parameter] | None)``
``-> Tensor``

``losses`` maps task -> scalar loss (final output plus deep supervision, as the trainer computes
it); ``step`` is the 0-based optimiser step being computed (every micro-batch of an accumulated
step passes the same ``step``). State: learnable tensors live in ``state_dict`` (the trainer's
optimiser updates them), histories in :meth:`Weighting.extra_state`;
:meth:`Weighting.checkpoint_state` holds both, so a resumed run continues exactly.

- ``fixed``: ``sum_t w_t L_t`` with the base weights.
- ``uncertainty``: homoscedastic uncertainty (Kendall et al., CVPR 2018, eq. 7 and 10).
- ``dwa``: Dynamic Weight Average (Liu et al., CVPR 2019, eq. 1).
- ``gradnorm``: GradNorm (Chen et al., ICML 2018, eq. 1-2, alpha 1.5).
- ``lps``: Loss Prioritization Scheme of MT-CP (papers/003, eq. 3-7, kappa 2.5, H = 3), on top
  of the base weights.

Base weights ``w_t``: the field's fixed weights (SPEC: semseg 1, parts 2, saliency 5, edge 50,
normals 10, depth 1), overridden per task by the config's ``loss_weights``
(:func:`build_weighting` merges them). ``fixed`` and ``lps`` always apply them. The other dynamic
weightings act on the raw task losses, as in their papers, unless ``base_scale=True``
(``L_t <- w_t L_t`` first); since they would then ignore the config's ``loss_weights``,
:func:`build_weighting` refuses that combination with a ConfigError naming both ways out.

Distributed runs: recorded losses (``dwa``, ``lps``, ``gradnorm``'s initial losses) are averaged
over the ranks with an all-reduce, so every rank holds the same state and weights;
gradients of learnable weights are averaged by the trainer
(:func:`mtlkit.engine.distributed.all_reduce_grads`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.registry import WEIGHTINGS

Params = list[nn.Parameter] | None


class Weighting(nn.Module):
    """Base class. ``tasks`` is the ordered task list; ``base_weights`` the base weights."""

    #: whether ``combine`` multiplies each task's loss by its base weight (if not, a config's
    #: ``loss_weights`` would have no effect and :func:`build_weighting` rejects them)
    uses_base_weights: bool = True

    def __init__(self, tasks: list[str], base_weights: dict[str, float], **kwargs: Any) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.base_weights = {t: float(base_weights.get(t, 1.0)) for t in self.tasks}

    def combine(
        self, losses: dict[str, Tensor], *, step: int, shared_params: Params = None
    ) -> Tensor:
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """The current effective weight of each task (for logging)."""
        return dict(self.base_weights)

    def set_steps_per_epoch(self, n: int) -> None:
        """Told by the trainer: optimiser steps per epoch (periodic weightings use it)."""

    def extra_state(self) -> dict[str, Any]:
        """Non-tensor state to checkpoint (histories etc.); tensors live in ``state_dict``."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def checkpoint_state(self) -> dict[str, Any]:
        return {"params": self.state_dict(), "extra": self.extra_state()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["params"])
        self.load_extra_state(state.get("extra", {}))


@WEIGHTINGS.register("fixed")
class FixedWeighting(Weighting):
    """``L = sum_t w_t L_t`` with fixed weights."""

    def combine(
        self, losses: dict[str, Tensor], *, step: int, shared_params: Params = None
    ) -> Tensor:
        return weighted_sum(losses, self.base_weights)


def weighted_sum(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum_t weights[t] * losses[t]`` in the order of ``losses`` (missing weight: 1).

    ``fixed`` and ``lps`` share it, so that ``lps`` with every multiplier 1 (its start-up period)
    computes bit for bit the loss of ``fixed``.
    """
    total = torch.zeros((), device=next(iter(losses.values())).device)
    for t, loss in losses.items():
        total = total + weights.get(t, 1.0) * loss
    return total


# --------------------------------------------------------------------------- helpers
def world_mean(values: list[float]) -> list[float]:
    """Average a list of floats over the ranks of a distributed run (identity otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).cpu().tolist()


class _Dynamic(Weighting):
    """Shared parts of the dynamic weightings: task order checks and ``base_scale``."""

    def __init__(self, tasks: list[str], base_weights: dict[str, float], *,
                 base_scale: bool = False) -> None:
        super().__init__(tasks, base_weights)
        self.base_scale = bool(base_scale)

    @property
    def uses_base_weights(self) -> bool:  # type: ignore[override]
        return self.base_scale

    def _vector(self, losses: dict[str, Tensor]) -> Tensor:
        """Stack the losses in task order: ``(T,)`` (scaled by the fixed weights if asked)."""
        missing = [t for t in self.tasks if t not in losses]
        if missing or len(losses) != len(self.tasks):
            raise ConfigError(
                f"weighting over tasks {self.tasks} got losses for {sorted(losses)}",
                "every weighted task must have exactly one loss",
            )
        vec = torch.stack([losses[t].float().reshape(()) for t in self.tasks])
        if self.base_scale:
            vec = vec * torch.tensor([self.base_weights[t] for t in self.tasks], device=vec.device)
        return vec


class _PeriodicHistory(_Dynamic):
    """Average task losses over periods of ``period`` optimiser steps (default: one epoch).

    ``history[-1]`` is the mean loss vector of the last completed period. A period closes when
    ``combine`` first sees a step of the next period. Under DDP every recorded loss vector is
    averaged over the ranks (one small all-reduce per call), so all ranks hold identical
    histories and partial sums - the weights agree and a resume from rank 0's checkpoint is exact.
    """

    def __init__(self, tasks: list[str], base_weights: dict[str, float], *,
                 period: int | None = None, keep: int = 2, base_scale: bool = False) -> None:
        super().__init__(tasks, base_weights, base_scale=base_scale)
        if period is not None and int(period) < 1:
            raise ConfigError(f"weighting period must be >= 1 step, got {period}")
        self.period = int(period) if period is not None else None
        self.keep = keep
        self.history: list[list[float]] = []
        self.current: int | None = None  # index of the period being accumulated
        self.sums = [0.0] * len(self.tasks)
        self.count = 0
        self.w = [1.0] * len(self.tasks)  # weights in effect for the current period

    def set_steps_per_epoch(self, n: int) -> None:
        if self.period is None:
            self.period = max(1, int(n))

    def _advance(self, step: int) -> None:
        if self.period is None:
            raise ConfigError(
                f"weighting {type(self).__name__} does not know its period",
                "pass weighting_kwargs: {period: STEPS} or train through the trainer",
            )
        p = step // self.period
        if self.current is None:
            self.current = p
        if p != self.current:
            if self.count:
                means = [s / self.count for s in self.sums]
                self.history = (self.history + [means])[-self.keep:]
                self.w = self.compute_weights()
            self.current, self.sums, self.count = p, [0.0] * len(self.tasks), 0

    def _record(self, vec: Tensor) -> None:
        # averaged over the ranks at every call, so every rank holds the same partial sums and
        # rank 0's checkpoint resumes all ranks exactly
        for i, v in enumerate(world_mean(vec.detach().double().cpu().tolist())):
            self.sums[i] += v
        self.count += 1

    def compute_weights(self) -> list[float]:
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.w, strict=True))

    def extra_state(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "current": self.current,
                "sums": list(self.sums), "count": self.count, "w": list(self.w),
                "period": self.period}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.history = [list(h) for h in state["history"]]
        self.current = state["current"]
        self.sums = list(state["sums"])
        self.count = int(state["count"])
        self.w = list(state["w"])
        if state.get("period") is not None:
            self.period = int(state["period"])


# --------------------------------------------------------------------------- uncertainty
@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(_Dynamic):
    """Homoscedastic task uncertainty (Kendall, Gal, Cipolla, CVPR 2018).

    Learnable log-variances ``s_t = log sigma_t^2`` (init ``init``, default 0), and

        ``L = sum_t exp(-s_t) L_t + s_t``.

    One form for every task. Kendall's eq. 7 for a regression task with a Gaussian likelihood is
    ``1/(2 sigma^2) L + log sigma = 1/2 (exp(-s) L + s)``, i.e. this form up to the constant
    factor 1/2; eq. 10 for a classification task is ``1/sigma^2 L + log sigma
    = exp(-s) L + s/2``, i.e. this form with half the regulariser. The uniform form keeps every
    task on the same scale (the common practice) and is what the tests pin down. The optimiser
    updates ``log_vars`` together with the model (they are in ``Weighting.parameters()``).
    """

    def __init__(self, tasks: list[str], base_weights: dict[str, float], *, init: float = 0.0,
                 base_scale: bool = False) -> None:
        super().__init__(tasks, base_weights, base_scale=base_scale)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init)))

    def combine(
        self, losses: dict[str, Tensor], *, step: int, shared_params: Params = None
    ) -> Tensor:
        vec = self._vector(losses)
        s = self.log_vars.to(vec.device)
        return (torch.exp(-s) * vec + s).sum()

    def weights(self) -> dict[str, float]:
        w = torch.exp(-self.log_vars.detach()).cpu().tolist()
        return dict(zip(self.tasks, w, strict=True))


# --------------------------------------------------------------------------- DWA
@WEIGHTINGS.register("dwa")
class DWAWeighting(_PeriodicHistory):
    """Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019, eq. 1).

    With ``Lbar_t(k)`` the mean loss of task t over period k (an epoch by default, or ``period``
    steps), the weights in period k are

        ``r_t = Lbar_t(k-1) / Lbar_t(k-2)``,
        ``w_t(k) = T exp(r_t / temp) / sum_j exp(r_j / temp)``  (T tasks, temp 2),

    and ``w_t = 1`` in the first two periods. ``L = sum_t w_t L_t``.
    """

    def __init__(self, tasks: list[str], base_weights: dict[str, float], *, temp: float = 2.0,
                 period: int | None = None, base_scale: bool = False) -> None:
        super().__init__(tasks, base_weights, period=period, keep=2, base_scale=base_scale)
        self.temp = float(temp)

    def compute_weights(self) -> list[float]:
        if len(self.history) < 2:
            return [1.0] * len(self.tasks)
        prev, prev2 = self.history[-1], self.history[-2]
        r = [a / max(b, 1e-12) for a, b in zip(prev, prev2, strict=True)]
        e = [math.exp(x / self.temp) for x in r]
        return [len(self.tasks) * x / sum(e) for x in e]

    def combine(
        self, losses: dict[str, Tensor], *, step: int, shared_params: Params = None
    ) -> Tensor:
        vec = self._vector(losses)
        self._advance(step)
        self._record(vec)
        return (torch.tensor(self.w, device=vec.device) * vec).sum()


# --------------------------------------------------------------------------- GradNorm
@WEIGHTINGS.register("gradnorm")
class GradNormWeighting(_Dynamic):
    """GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018), asymmetry ``alpha`` 1.5.

    Learnable weights ``w_t`` (init 1). With ``W`` the last shared layer (``shared_params``,
    required: the trainer passes ``model.shared_parameters()``; an arch without that method
    cannot use GradNorm), per call:

    - ``g_t = ||grad_W L_t||_2`` (all of ``shared_params`` flattened into one vector), so
      ``G_t = w_t g_t`` is the gradient norm of the weighted loss;
    - ``Ltilde_t = L_t / L_t(0)`` (``L_t(0)``: losses of the first call, averaged over ranks),
      ``r_t = Ltilde_t / mean_j Ltilde_j``;
    - ``L_grad = sum_t | G_t - [mean_j G_j * r_t^alpha] |`` (eq. 2; the bracket is a constant);
    - ``dL_grad/dw`` (``torch.autograd.grad``) is applied to ``w`` inside ``combine`` through a
      zero-valued surrogate term ``(w - sg(w)) . sg(dL_grad/dw)`` added to the returned loss, so
      the trainer's ``backward`` (with its accumulation scaling) deposits exactly that gradient
      in ``w.grad`` and the network receives the gradient of ``sum_t sg(w_t) L_t`` only.

    Returned value: ``sum_t w_t L_t``. The weights are renormalised to ``sum_t w_t = T`` at the
    start of every call (i.e. after each optimiser step of the previous step's update).
    """

    def __init__(self, tasks: list[str], base_weights: dict[str, float], *, alpha: float = 1.5,
                 base_scale: bool = False) -> None:
        super().__init__(tasks, base_weights, base_scale=base_scale)
        self.alpha = float(alpha)
        self.w = nn.Parameter(torch.ones(len(self.tasks)))
        self.initial: list[float] | None = None
        self.last_l_grad: float | None = None  # GradNorm loss of the last call (for logging)

    def combine(
        self, losses: dict[str, Tensor], *, step: int, shared_params: Params = None
    ) -> Tensor:
        if not shared_params:
            raise ConfigError(
                "weighting 'gradnorm' needs the last shared layer's parameters",
                "use an arch with a shared_parameters() method or another weighting",
            )
        vec = self._vector(losses)
        n = len(self.tasks)
        with torch.no_grad():
            self.w.mul_(n / self.w.sum())
        if self.initial is None:
            self.initial = world_mean(vec.detach().double().cpu().tolist())
        params = [p for p in shared_params if p.requires_grad]
        norms = []
        for i in range(n):
            grads = torch.autograd.grad(vec[i], params, retain_graph=True, allow_unused=True)
            sq = sum((g.float() ** 2).sum() for g in grads if g is not None)
            norms.append(torch.sqrt(torch.as_tensor(sq, device=vec.device, dtype=torch.float32)))
        g = torch.stack(norms).detach()
        w = self.w.to(vec.device)
        big_g = w * g
        ratio = vec.detach() / torch.tensor(self.initial, device=vec.device, dtype=vec.dtype)
        r = ratio / ratio.mean()
        target = (big_g.mean() * r.pow(self.alpha)).detach()
        l_grad = (big_g - target).abs().sum()
        (dw,) = torch.autograd.grad(l_grad, self.w)
        dw = dw.detach().to(vec.device)
        surrogate = (w * dw).sum() - (w.detach() * dw).sum()
        self.last_l_grad = l_grad.item()
        return (w.detach() * vec).sum() + surrogate

    def weights(self) -> dict[str, float]:
        w = self.w.detach()
        w = (w * len(self.tasks) / w.sum()).cpu().tolist()
        return dict(zip(self.tasks, w, strict=True))

    def extra_state(self) -> dict[str, Any]:
        return {"initial": None if self.initial is None else list(self.initial)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        init = state.get("initial")
        self.initial = None if init is None else list(init)


# --------------------------------------------------------------------------- LPS (MT-CP)
@WEIGHTINGS.register("lps")
class LPSWeighting(_PeriodicHistory):
    """Loss Prioritization Scheme of MT-CP (papers/003 sec. 3.5, eq. 3-7), on the base weights.

    mtlkit follows the paper's equations and applies them on top of the field's loss scales:
    task i's loss is ``b_i L_i`` (``b_i`` its base weight: the field's fixed weight or the
    config's ``loss_weights``; never ignored) and the combined loss is

        ``L = sum_i b_i [log(1 + w_i) / log 2] L_i``                        (eq. 3, scaled)

    The constant ``1 / log 2`` (common to every task and every step) makes the neutral LPS
    weight ``w = 1`` (eq. 4: a task progressing at the pace of the total) give exactly the base
    weight; the ratios between tasks are eq. 3's. ``weights()`` reports the effective weights
    ``b_i log(1 + w_i) / log 2``.

    Weights ``w_i``, updated when a period closes (an epoch by default - "at each epoch n" - or
    every ``period`` steps). With ``L_i^m`` the mean of ``b_i L_i`` over period m and
    ``L^m = sum_i L_i^m``, after period n closes (history length ``history`` = H = 3, Sec. 4.2):

    - start-up: before H + 1 periods have completed, ``w_i = 1`` (every task at its base
      weight); at 800 images and batch 8 that is the first 400 steps;
    - eq. 4: ``wtilde_i = prod_{k=1..H} (L_i^{n-k+1} / L_i^{n-k})
      / prod_{k=1..H} (L^{n-k+1} / L^{n-k})``. The paper prints ``L_i^{n-k+1}`` in the
      denominator's numerator; taken literally the fraction collapses to
      ``prod_k L^{n-k} / L_i^{n-k}`` and no longer measures progress, contradicting the text
      (``wtilde < 1``: the task's loss decreases faster than the total). We read it as the
      total ``L^{n-k+1}``, i.e. the change of task i's share ``L_i / L`` over H periods (the
      authors' code computes the same ratio of ratios, with H = 1);
    - eq. 5-6: ``mu = mean_i wtilde_i``, ``sigma_i = wtilde_i - mu``,
      ``w_i = mu + kappa sigma_i`` (kappa 2.5);
    - floor: ``w_i >= min_weight`` (default 0.1, must be > 0). It guards eq. 3: the paper
      assumes ``w >= 0`` ("log(1 + w) avoids negative weights"), but kappa > 1 in eq. 6 pushes
      a task that progresses fast below 0 (``w <= -1`` would leave the log undefined), and
      ``w = 0`` would give the task weight 0 for a whole period. With the floor every task
      keeps at least ``log(1.1) / log 2 = 13.75 %`` of its base weight.

    What the paper leaves open, and mtlkit's choice: the scale of the losses in eq. 3-4 (here the
    field's scales ``b_i L_i``, so the total of eq. 4 is the loss the ``fixed`` weighting
    minimises), the weights before H periods exist (here the base weights), the handling of
    ``w <= 0`` (here the floor above), the period (here one epoch, the paper's "each epoch n").

    The authors' released code (Klodivio355/MT-CP, ``main_CL_nyud.py`` / ``main_CL_pascal.py``,
    ``losses/loss_schemes.py``) differs from the paper: H = 1 (one epoch's ratio of ratios,
    after an epoch-0 weight of ``L / L_i``), spread 7.5 on NYUD and 1.6 on PASCAL instead of
    kappa 2.5, no ``log(1 + w)``, no floor, raw (unscaled) losses, and its ``MultiTaskLoss``
    overwrites the weighted total with the unweighted sum of the task losses, so the computed
    weights never reach the gradient. mtlkit follows the paper (eq. 3-7, kappa 2.5, H = 3).

    Eq. 7 adds the intermediate (deep-supervision) losses unweighted; in mtlkit the trainer folds
    ``aux_weight`` x deep-supervision losses into ``L_i`` before weighting, so they share the
    task's LPS weight (an arch wanting eq. 7 literally returns them as ``extra_losses``).
    """

    def __init__(self, tasks: list[str], base_weights: dict[str, float], *, kappa: float = 2.5,
                 history: int = 3, period: int | None = None,
                 min_weight: float = 0.1) -> None:
        if int(history) < 1:
            raise ConfigError(f"lps history must be >= 1, got {history}")
        if not float(min_weight) > 0:
            raise ConfigError(
                f"lps min_weight must be > 0, got {min_weight}",
                "a weight w <= 0 gives log(1 + w) <= 0 in eq. 3; use e.g. the default 0.1",
            )
        super().__init__(tasks, base_weights, period=period, keep=int(history) + 1,
                         base_scale=True)
        self.kappa = float(kappa)
        self.h = int(history)
        self.min_weight = float(min_weight)

    def compute_weights(self) -> list[float]:
        hist = self.history
        if len(hist) < self.h + 1:
            return [1.0] * len(self.tasks)
        tot = [sum(x) for x in hist]
        wt = []
        for i in range(len(self.tasks)):
            num = den = 1.0
            for k in range(1, self.h + 1):
                num *= hist[-k][i] / max(hist[-k - 1][i], 1e-12)
                den *= tot[-k] / max(tot[-k - 1], 1e-12)
            wt.append(num / den)
        mu = sum(wt) / len(wt)
        return [max(self.min_weight, mu + self.kappa * (x - mu)) for x in wt]

    def multipliers(self) -> list[float]:
        """``log(1 + w_i) / log 2`` per task: exactly 1 for ``w_i = 1`` (eq. 3, scaled)."""
        return [math.log1p(x) / math.log1p(1.0) for x in self.w]

    def combine(
        self, losses: dict[str, Tensor], *, step: int, shared_params: Params = None
    ) -> Tensor:
        vec = self._vector(losses)  # b_i L_i in task order, recorded for eq. 4
        self._advance(step)
        self._record(vec)
        return weighted_sum(losses, self.weights())

    def weights(self) -> dict[str, float]:
        return {t: self.base_weights[t] * m
                for t, m in zip(self.tasks, self.multipliers(), strict=True)}


def build_weighting(
    name: str, tasks: list[str], base_weights: dict[str, float], *,
    loss_weights: dict[str, float] | None = None, **kwargs: Any
) -> Weighting:
    """Instantiate a registered weighting by name.

    ``base_weights``: the field's fixed weight per task; ``loss_weights``: the config's
    per-task overrides (merged over ``base_weights``). ConfigError when a loss weight is not a
    finite number >= 0, or when the weighting would ignore the given ``loss_weights`` (a dynamic
    weighting on raw losses, i.e. without ``base_scale: true``).
    """
    given = {t: v for t, v in (loss_weights or {}).items() if t in tasks}
    for t, v in given.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            raise ConfigError(f"loss_weights: {t} = {v!r} is not a finite number >= 0",
                              "give each task's loss weight as a number, e.g. edge: 50.0")
    base = {**base_weights, **{t: float(v) for t, v in given.items()}}
    try:
        weighting = WEIGHTINGS.get(name)(tasks, base, **kwargs)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise ConfigError(f"bad weighting_kwargs for {name!r}: {e}",
                          "see the weighting's docstring in mtlkit/weighting.py") from e
    if given and not weighting.uses_base_weights:
        raise ConfigError(
            f"weighting {name!r} acts on the raw task losses and would ignore loss_weights "
            f"{given}",
            "set weighting_kwargs: {base_scale: true} to scale the losses by them first, "
            "or remove loss_weights from the config",
        )
    return weighting
