"""Loss weightings: each on a scripted two-task problem against a hand computation of its
formula, plus checkpoint-state round trips (resume continues exactly)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from mtlkit.errors import ConfigError, UnknownNameError
from mtlkit.weighting import build_weighting

TASKS = ["a", "b"]
BASE = {"a": 1.0, "b": 50.0}


def _l(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(a), "b": torch.tensor(b)}


def test_fixed_uses_base_weights() -> None:
    w = build_weighting("fixed", TASKS, BASE)
    assert float(w.combine(_l(2.0, 0.1), step=0)) == pytest.approx(2.0 + 50 * 0.1)


def test_unknown_name_and_bad_kwargs() -> None:
    with pytest.raises(UnknownNameError):
        build_weighting("nope", TASKS, BASE)
    with pytest.raises(ConfigError, match="weighting_kwargs"):
        build_weighting("dwa", TASKS, BASE, tempp=2.0)


# ----------------------------------------------------------------------------- uncertainty
def test_uncertainty_formula_and_gradient() -> None:
    w = build_weighting("uncertainty", TASKS, BASE)
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    total = w.combine(_l(2.0, 0.5), step=0)
    # exp(-0) * 2 + 0 + exp(-ln 2) * 0.5 + ln 2 = 2 + 0.25 + 0.693147
    assert total.item() == pytest.approx(2.9431472, abs=1e-6)
    total.backward()
    # d/ds_t = 1 - exp(-s_t) L_t = [1 - 2, 1 - 0.25]
    assert w.log_vars.grad.tolist() == pytest.approx([-1.0, 0.75])
    assert w.weights() == pytest.approx({"a": 1.0, "b": 0.5})


def test_uncertainty_base_scale() -> None:
    w = build_weighting("uncertainty", TASKS, BASE, base_scale=True)
    # s = 0: L = 1 * 2 + 50 * 0.1 = 7
    assert w.combine(_l(2.0, 0.1), step=0).item() == pytest.approx(7.0)


# ----------------------------------------------------------------------------- DWA
def test_dwa_formula() -> None:
    w = build_weighting("dwa", TASKS, BASE, period=2)  # temp 2
    # period 0 (steps 0, 1): mean a = 3, b = 1; weights 1
    assert float(w.combine(_l(4.0, 1.0), step=0)) == pytest.approx(5.0)
    assert float(w.combine(_l(2.0, 1.0), step=1)) == pytest.approx(3.0)
    # period 1 (steps 2, 3): mean a = 1.5, b = 1; still weights 1 (only one period of history)
    assert float(w.combine(_l(1.5, 1.0), step=2)) == pytest.approx(2.5)
    assert float(w.combine(_l(1.5, 1.0), step=3)) == pytest.approx(2.5)
    # period 2: r = (1.5/3, 1/1) = (0.5, 1);
    # w_a = 2 e^0.25 / (e^0.25 + e^0.5) = 0.875647, w_b = 2 e^0.5 / (...) = 1.124353
    total = w.combine(_l(1.0, 2.0), step=4)
    assert w.weights() == pytest.approx({"a": 0.875647, "b": 1.124353}, abs=1e-6)
    assert total.item() == pytest.approx(0.875647 + 2 * 1.124353, abs=1e-5)
    assert sum(w.weights().values()) == pytest.approx(2.0)


def test_dwa_period_from_trainer_and_missing_period() -> None:
    w = build_weighting("dwa", TASKS, BASE)
    with pytest.raises(ConfigError, match="period"):
        w.combine(_l(1.0, 1.0), step=0)
    w.set_steps_per_epoch(5)
    assert w.period == 5
    w.combine(_l(1.0, 1.0), step=0)


# ----------------------------------------------------------------------------- GradNorm
def test_gradnorm_formula() -> None:
    shared = torch.nn.Parameter(torch.tensor([1.0]))
    w = build_weighting("gradnorm", TASKS, BASE)  # alpha 1.5

    def losses() -> dict[str, torch.Tensor]:  # L_a = 3 W (grad 3), L_b = W^2 (grad 2W)
        return {"a": 3 * shared.sum(), "b": (shared ** 2).sum()}

    # call 1 (W = 1): L(0) = (3, 1), r = (1, 1), w = (1, 1), g = (3, 2), G = (3, 2), mean 2.5,
    # target (2.5, 2.5), L_grad = 1, dL_grad/dw = (sign(0.5) 3, sign(-0.5) 2) = (3, -2)
    total = w.combine(losses(), step=0, shared_params=[shared])
    assert total.item() == pytest.approx(3.0 + 1.0)
    total.backward()
    assert w.w.grad.tolist() == pytest.approx([3.0, -2.0])
    assert shared.grad.tolist() == pytest.approx([3.0 + 2.0])  # network sees sum sg(w_t) L_t

    # call 2: W = 2, weights (1.5, 0.7) renormalised to sum 2 -> (1.363636, 0.636364);
    # L = (6, 4), Ltilde = (2, 4), r = (2/3, 4/3), g = (3, 4), G = (4.090909, 2.545455),
    # mean G 3.318182, target = 3.318182 r^1.5 = (1.806189, 5.108675),
    # G - target = (2.28472, -2.56322) -> L_grad 4.84794, dL_grad/dw = (3, -4)
    with torch.no_grad():
        shared.fill_(2.0)
        w.w.copy_(torch.tensor([1.5, 0.7]))
    w.w.grad = None
    shared.grad = None
    total = w.combine(losses(), step=1, shared_params=[shared])
    assert w.w.tolist() == pytest.approx([1.363636, 0.636364], abs=1e-6)
    assert total.item() == pytest.approx(1.363636 * 6 + 0.636364 * 4, abs=1e-5)
    assert w.last_l_grad == pytest.approx(4.84794, abs=1e-5)
    total.backward()
    assert w.w.grad.tolist() == pytest.approx([3.0, -4.0])
    assert shared.grad.tolist() == pytest.approx([1.363636 * 3 + 0.636364 * 4], abs=1e-5)


def test_gradnorm_requires_shared_params() -> None:
    w = build_weighting("gradnorm", TASKS, BASE)
    with pytest.raises(ConfigError, match="shared"):
        w.combine(_l(1.0, 1.0), step=0)


# ----------------------------------------------------------------------------- LPS
# BASE = {a: 1, b: 50} is the field's weights; the config's loss_weights override b with 2, so
# the recorded (scaled) losses below are a: raw, b: 2 x raw.
LW = {"b": 2.0}


def _lps_startup(w, rows: list[tuple[float, float]]) -> None:
    """Feed one step per row; before H + 1 = 4 completed periods every weight is the base one."""
    fixed = build_weighting("fixed", TASKS, BASE, loss_weights=LW)
    for step, (a, b) in enumerate(rows):
        xa, xb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        ya, yb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        total = w.combine({"a": xa, "b": xb}, step=step)
        ref = fixed.combine({"a": ya, "b": yb}, step=step)
        assert w.weights() == {"a": 1.0, "b": 2.0}
        # bit for bit the loss and the gradients of ``fixed`` with the same base weights
        assert total.item() == ref.item() == a + 2.0 * b
        total.backward()
        ref.backward()
        assert (xa.grad.item(), xb.grad.item()) == (ya.grad.item(), yb.grad.item()) == (1.0, 2.0)


def test_lps_formula_on_config_base_weights() -> None:
    w = build_weighting("lps", TASKS, BASE, loss_weights=LW, period=1)  # kappa 2.5, H = 3
    # scaled period means: a = 8, 4, 2, 2; b = 2 x (2, 2, 2, 1) = 4, 4, 4, 2; totals 12, 8, 6, 4
    _lps_startup(w, [(8.0, 2.0), (4.0, 2.0), (2.0, 2.0), (2.0, 1.0)])
    total = w.combine(_l(1.0, 0.5), step=4)
    # eq. 4: prod of task ratios a: 2/8 = 0.25, b: 2/4 = 0.5; prod of total ratios 4/12 = 1/3
    # wtilde = (0.75, 1.5), mu = 1.125, eq. 6: w = 1.125 -/+ 2.5 * 0.375 = (0.1875, 2.0625)
    assert w.w == pytest.approx([0.1875, 2.0625])
    # eq. 3 scaled by 1 / log 2: log(1.1875) / log 2 = 0.247928, log(3.0625) / log 2 = 1.614710;
    # effective weights = base x multiplier = (1 x 0.247928, 2 x 1.614710)
    assert w.multipliers() == pytest.approx([0.247928, 1.614710], abs=1e-6)
    assert w.weights() == pytest.approx({"a": 0.247928, "b": 3.229420}, abs=1e-6)
    assert total.item() == pytest.approx(0.247928 * 1.0 + 3.229420 * 0.5, abs=1e-5)


def test_lps_uses_the_fields_weights_without_config() -> None:
    w = build_weighting("lps", TASKS, BASE, period=1)
    assert w.weights() == BASE
    assert w.combine(_l(2.0, 0.1), step=0).item() == pytest.approx(2.0 + 50 * 0.1)


def test_lps_floor_keeps_every_weight_positive() -> None:
    w = build_weighting("lps", TASKS, BASE, loss_weights=LW, period=1)
    # scaled means: a 8, 4, 2, 1; b 4, 4, 4, 3; totals 12, 8, 6, 4
    _lps_startup(w, [(8.0, 2.0), (4.0, 2.0), (2.0, 2.0), (1.0, 1.5)])
    w.combine(_l(1.0, 1.0), step=4)
    # ratios a 1/8, b 3/4, total 4/12 -> wtilde (0.375, 2.25), mu 1.3125,
    # eq. 6: w = (1.3125 - 2.5 * 0.9375, 1.3125 + 2.5 * 0.9375) = (-1.03125, 3.65625);
    # the floor 0.1 keeps eq. 3's log(1 + w) positive: multiplier log(1.1) / log 2 = 0.137504
    assert w.w == pytest.approx([0.1, 3.65625])
    assert w.weights()["a"] == pytest.approx(0.137504, abs=1e-6)
    assert min(w.weights().values()) > 0


def test_lps_min_weight_must_be_positive() -> None:
    for bad in (0.0, -0.5):
        with pytest.raises(ConfigError, match="min_weight"):
            build_weighting("lps", TASKS, BASE, min_weight=bad)
    w = build_weighting("lps", TASKS, BASE, loss_weights=LW, period=1, min_weight=0.5)
    _lps_startup(w, [(8.0, 2.0), (4.0, 2.0), (2.0, 2.0), (1.0, 1.5)])
    w.combine(_l(1.0, 1.0), step=4)
    assert w.w == pytest.approx([0.5, 3.65625])  # the floor is configurable


def test_lps_period_averages_micro_batches() -> None:
    w = build_weighting("lps", TASKS, BASE, loss_weights=LW, period=2, history=1)
    # two calls per step (accumulation) and two steps per period: means of 4 calls
    for step, (a, b) in enumerate([(4.0, 1.0), (4.0, 1.0), (1.0, 1.0), (1.0, 1.0)]):
        for _ in range(2):
            w.combine(_l(a, b), step=step)
    w.combine(_l(1.0, 1.0), step=4)
    # H = 1: scaled means p0 (4, 2) tot 6, p1 (1, 2) tot 3: wtilde = (0.25/0.5, 1/0.5) = (0.5, 2)
    # mu 1.25, w = 1.25 + 2.5 * (-0.75, 0.75) = (-0.625 -> floor 0.1, 3.125)
    assert w.w == pytest.approx([0.1, 3.125])


def test_lps_rejects_base_scale() -> None:
    # lps always applies the base weights; there is no raw-loss mode to switch on or off
    with pytest.raises(ConfigError, match="weighting_kwargs"):
        build_weighting("lps", TASKS, BASE, base_scale=False)


# ----------------------------------------------------------------------------- loss_weights
def test_fixed_applies_config_loss_weights() -> None:
    w = build_weighting("fixed", TASKS, BASE, loss_weights={"b": 10.0})
    assert w.combine(_l(2.0, 0.1), step=0).item() == pytest.approx(2.0 + 10 * 0.1)


@pytest.mark.parametrize("name,kw", [
    ("uncertainty", {}), ("dwa", {"period": 2}), ("gradnorm", {}),
])
def test_raw_loss_weightings_refuse_config_loss_weights(name: str, kw: dict) -> None:
    # on raw losses they would silently ignore the config's loss_weights
    with pytest.raises(ConfigError, match="ignore loss_weights.*base_scale"):
        build_weighting(name, TASKS, BASE, loss_weights={"b": 10.0}, **kw)
    # with base_scale the loss weights are applied (and weights of other tasks do not matter)
    w = build_weighting(name, TASKS, BASE, loss_weights={"b": 10.0, "edge": 3.0},
                        base_scale=True, **kw)
    assert w.base_weights == {"a": 1.0, "b": 10.0}
    shared = torch.nn.Parameter(torch.tensor([1.0]))
    losses = {"a": 2.0 * shared.sum(), "b": 0.1 * shared.sum()}
    total = w.combine(losses, step=0, shared_params=[shared])
    assert total.item() == pytest.approx(2.0 + 10 * 0.1)  # initial weights 1 (s = 0 / w = 1)
    # loss weights of tasks that are not trained are not "ignored" ones
    build_weighting(name, TASKS, BASE, loss_weights={"edge": 3.0}, **kw)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "x", True, None])
def test_bad_loss_weight_values(bad: object) -> None:
    with pytest.raises(ConfigError, match="loss_weights: b"):
        build_weighting("fixed", TASKS, BASE, loss_weights={"b": bad})


def test_trainer_passes_config_loss_weights(tiny_h5, tmp_path) -> None:
    from mtlkit.config import RunConfig
    from mtlkit.engine.trainer import Trainer

    def cfg(weighting: str, out: str) -> RunConfig:
        c = RunConfig()
        c.data.dataset, c.data.path, c.data.size = "synthetic-nyud", str(tiny_h5), [64, 80]
        c.model.arch, c.model.kwargs = "baseline", {"channels": 8}
        c.train.weighting, c.train.out = weighting, str(tmp_path / out)
        c.train.loss_weights = {"edge": 25.0}
        return c

    t = Trainer(cfg("lps", "lps"), progress=False)
    assert t.weighting.weights()["edge"] == 25.0  # the config's weight, not the field's 50
    assert t.weighting.weights()["normals"] == 10.0
    with pytest.raises(ConfigError, match="ignore loss_weights"):
        Trainer(cfg("dwa", "dwa"), progress=False)
    assert not (tmp_path / "dwa").exists()  # refused before anything is written


# ----------------------------------------------------------------------------- resume
def _script(name: str, steps: range, w, opt, shared, **kw) -> list[float]:
    out = []
    for s in steps:
        x = 1.0 + 0.3 * math.sin(s) + 0.1 * s
        for micro in range(2):
            ls = {"a": 3 * shared.sum() * x + micro, "b": (shared ** 2).sum() / x + 0.5}
            total = w.combine(ls, step=s, shared_params=[shared])
            (total / 2).backward()
            out.append(total.item())
        opt.step()
        opt.zero_grad()
    return out


@pytest.mark.parametrize("name,kw", [
    ("uncertainty", {}), ("dwa", {"period": 2}), ("gradnorm", {}), ("lps", {"period": 1}),
])
def test_state_round_trip_resumes_exactly(name: str, kw: dict) -> None:
    def fresh():
        torch.manual_seed(0)
        shared = torch.nn.Parameter(torch.tensor([1.0, -0.5]))
        w = build_weighting(name, TASKS, BASE, **kw)
        opt = torch.optim.Adam([shared, *w.parameters()], lr=0.05)
        return shared, w, opt

    shared, w, opt = fresh()
    full = _script(name, range(12), w, opt, shared)
    ref = w.checkpoint_state()

    shared, w, opt = fresh()
    first = _script(name, range(7), w, opt, shared)
    buf = io.BytesIO()
    torch.save({"w": w.checkpoint_state(), "opt": opt.state_dict(), "shared": shared.detach()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    shared, w, opt = fresh()
    w.load_checkpoint_state(state["w"])
    opt.load_state_dict(state["opt"])
    with torch.no_grad():
        shared.copy_(state["shared"])
    rest = _script(name, range(7, 12), w, opt, shared)
    assert first + rest == full
    assert w.extra_state() == ref["extra"]
    for k, v in ref["params"].items():
        assert torch.equal(v, w.state_dict()[k])
    if name in ("dwa", "lps"):
        assert w.history, "the script must reach the dynamic regime"
