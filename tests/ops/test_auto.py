"""The default implementation policy ``auto`` (mtlkit.ops.tuning, mtlkit.ops.dispatch), on a CPU.

Timing is injected (:class:`tests.ops.conftest.FakeTimer`), so no test depends on wall-clock
time: ``auto`` picks the fastest candidate, rejects a wrong-but-fast one, yields to ``use()`` and
``MTLKIT_IMPL``, reads and writes its JSON cache, survives a corrupt or stale cache, falls back to
the static table under ``MTLKIT_TUNE=0``, never draws from the global RNG, and never times under
functorch, fake tensors or ``torch.compile`` tracing. Fallbacks from an implementation named
explicitly warn once per shape bucket.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import mtlkit.ops as ops
from mtlkit.ops import dispatch, impls, reference, tuning
from mtlkit.ops._errors import ImplementationDeclined
from tests.ops.conftest import FakeTimer

pytestmark = pytest.mark.usefixtures("fresh_tuning")


def bfe_args(B=2, Nq=5, grad=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).to(dtype).requires_grad_(grad)

    return (r(B, Nq, 8), r(B, 2, 3, 4, 4), r(8, 3), r(8, 3), r(8), r(8)), {"pool": 2, "heads": 2}


def impl_source(ran: dispatch.Ran) -> tuple[str, str]:
    return ran.impl, ran.source


def run_bfe(args, kw):
    with dispatch.recording() as log:
        out = ops.bfe_attention(*args, **kw)
    (ran,) = list(log)
    return out, ran


@pytest.fixture
def extra_impl():
    """Register implementations for one test; removes them afterwards."""
    added = []

    def add(impl: impls.Implementation) -> impls.Implementation:
        added.append(impl)
        return impls.register(impl)

    yield add
    for impl in added:
        impls.unregister(impl.op, impl.name)


# --------------------------------------------------------------------------- choosing
@pytest.mark.parametrize("grad", [True, False])
def test_picks_the_fastest_and_remembers(grad):
    timer = FakeTimer({"reference": 5.0, "sdpa": 1.0})
    with tuning.use_timer(timer):
        _, ran = run_bfe(*bfe_args(grad=grad))
        assert ran.impl == "sdpa" and ran.source == "auto: measured" and ran.grad == grad
        assert sorted(timer.calls) == ["reference", "sdpa"]
        _, ran = run_bfe(*bfe_args(grad=grad, seed=1))  # same key: no new measurement
        assert ran.impl == "sdpa" and len(timer.calls) == 2
        timer.times = {"reference": 1.0, "sdpa": 5.0}
        _, ran = run_bfe(*bfe_args(B=5, grad=grad))  # another shape bucket: measured again
        assert ran.impl == "reference" and len(timer.calls) == 4


def test_key_separates_dtype_gradient_and_bucket():
    timer = FakeTimer({"reference": 5.0, "sdpa": 1.0})
    with tuning.use_timer(timer):
        run_bfe(*bfe_args(B=3))
        run_bfe(*bfe_args(B=4))                       # B 3 and 4 share the bucket B4
        assert len(timer.calls) == 2
        run_bfe(*bfe_args(B=4, grad=False))           # no gradient: another key
        run_bfe(*bfe_args(B=4, dtype=torch.float64))  # another dtype
        assert len(timer.calls) == 6
    keys = list(tuning.decisions())
    assert len(keys) == 3 and all(k.startswith("bfe_attention | cpu | torch ") for k in keys)
    assert {tuning.decisions()[k].bucket for k in keys} == {"B4 Nq8 Nk8 T2 C3 E8 heads2 pool2"}


def test_ties_go_to_the_earlier_name():
    with tuning.use_timer(FakeTimer({"reference": 1.0, "sdpa": 1.0})):
        _, ran = run_bfe(*bfe_args())
    assert ran.impl == "reference"


def test_rejects_a_wrong_but_fast_candidate(extra_impl):
    def wrong(*args, **kw):
        return reference.bfe_attention(*args, **kw) * 1.2

    extra_impl(impls.Implementation("bfe_attention", "wrong", wrong))
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 3.0, "wrong": 0.1})):
        out, ran = run_bfe(*bfe_args())
    assert ran.impl == "sdpa"
    (d,) = tuning.decisions().values()
    assert d.ranking == ["sdpa", "reference"] and "wrong" not in d.times_ms
    assert d.notes["wrong"].startswith("rejected: differs from reference")


class _BadGrad(torch.autograd.Function):
    """Identity forward, gradient doubled."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_a_wrong_gradient_is_rejected_only_when_a_gradient_is_needed(extra_impl):
    def bad_backward(*args, **kw):
        return _BadGrad.apply(reference.bfe_attention(*args, **kw))

    extra_impl(impls.Implementation("bfe_attention", "badgrad", bad_backward))
    timer = FakeTimer({"reference": 5.0, "sdpa": 3.0, "badgrad": 0.1})
    with tuning.use_timer(timer):
        assert run_bfe(*bfe_args(grad=True))[1].impl == "sdpa"
        assert run_bfe(*bfe_args(grad=False))[1].impl == "badgrad"  # forward is right


def test_a_failing_candidate_is_left_out(extra_impl):
    def broken(*args, **kw):
        raise RuntimeError("CUDA error: out of memory\nmore")

    def declines(*args, **kw):
        raise ImplementationDeclined("no shared memory")

    extra_impl(impls.Implementation("bfe_attention", "broken", broken))
    extra_impl(impls.Implementation("bfe_attention", "declines", declines))
    with tuning.use_timer(FakeTimer({"broken": 0.1, "declines": 0.1})):
        _, ran = run_bfe(*bfe_args())
    (d,) = tuning.decisions().values()
    assert ran.impl == d.choice and d.choice in ("reference", "sdpa")
    assert d.notes["broken"] == "failed: CUDA error: out of memory"
    assert d.notes["declines"] == "declined: no shared memory"
    assert d.notes["cuda"].startswith("not a candidate: ")


def test_an_experimental_implementation_is_never_a_candidate(extra_impl):
    from mtlkit.ops import compositions

    extra_impl(impls.Implementation("bfe_attention", "exp", compositions.bfe_sdpa,
                                    experimental=True))
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 3.0, "exp": 0.1})):
        assert run_bfe(*bfe_args())[1].impl == "sdpa"
        (d,) = tuning.decisions().values()
        assert d.notes["exp"].startswith("not a candidate: experimental")
        with ops.use(bfe_attention="exp"):  # named explicitly, it runs
            assert run_bfe(*bfe_args())[1].impl == "exp"
    assert impls.get("bfe_attention", "cuda_tc").experimental
    assert impls.get("hdc_conv", "cuda_band").experimental


def test_auto_checks_its_choice_against_each_call(extra_impl, fresh_tuning):
    """A choice made for a shape bucket is not run on a call it cannot take (another member of
    the bucket, or a name no longer registered): the next of the ranking runs, with a warning."""
    from mtlkit.ops import compositions

    extra_impl(impls.Implementation("bfe_attention", "no7", compositions.bfe_sdpa,
                                    check=lambda q, *a, **k: "Nq = 7" if q.shape[1] == 7
                                    else None))
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 3.0, "no7": 1.0})):
        assert run_bfe(*bfe_args(Nq=5))[1].impl == "no7"
        with pytest.warns(RuntimeWarning, match="'no7', auto's choice for B2 Nq8 .*cannot run "
                                                "this call: Nq = 7; running 'sdpa' instead"):
            assert run_bfe(*bfe_args(Nq=7))[1].impl == "sdpa"
        impls.unregister("bfe_attention", "no7")
        tuning.reset()  # the file still names no7
        with pytest.warns(RuntimeWarning, match="stale cached choice"):
            assert run_bfe(*bfe_args(Nq=5))[1].impl == "sdpa"


# --------------------------------------------------------------------------- overrides
def test_use_and_env_win_over_auto(monkeypatch):
    timer = FakeTimer({"reference": 5.0, "sdpa": 1.0})
    args = bfe_args()
    with tuning.use_timer(timer):
        monkeypatch.setenv("MTLKIT_IMPL", "bfe_attention=reference, ifb=reference")
        assert impl_source(run_bfe(*args)[1]) == ("reference", "MTLKIT_IMPL")
        assert timer.calls == []  # nothing measured for an explicit choice
        with ops.use(bfe_attention="sdpa"):
            assert impl_source(run_bfe(*args)[1]) == ("sdpa", "use()")
            with ops.use(bfe_attention="auto"):  # back to measuring, over the environment
                assert impl_source(run_bfe(*args)[1]) == ("sdpa", "auto: measured")
            with ops.use(tpp_attention="reference"):  # other ops: the outer choice stays
                assert run_bfe(*args)[1].impl == "sdpa"
        assert run_bfe(*args)[1].impl == "reference"
        monkeypatch.setenv("MTLKIT_IMPL", "bfe_attention=auto")
        assert run_bfe(*args)[1].source == "auto: measured"


def test_explicit_choices_give_the_same_numbers():
    args, kw = bfe_args(dtype=torch.float64)
    outs = {}
    for name in ops.implementations("bfe_attention", device="cpu"):
        with ops.use(bfe_attention=name):
            outs[name] = ops.bfe_attention(*args, **kw)
    torch.testing.assert_close(outs["sdpa"], outs["reference"])


@pytest.mark.parametrize("value,match", [
    ("bfe_attention=nope", "bfe_attention has no implementation 'nope'"),
    ("nope=sdpa", "unknown op 'nope'"),
    ("bfe_attention", "op=implementation pairs"),
])
def test_bad_mtlkit_impl(monkeypatch, value, match):
    monkeypatch.setenv("MTLKIT_IMPL", value)
    with pytest.raises(ValueError, match=match):
        ops.bfe_attention(*bfe_args()[0], pool=2, heads=2)


def test_bad_use():
    with pytest.raises(ValueError, match="choose one of reference, sdpa, cuda, cuda_tc, auto"):
        with ops.use(bfe_attention="flash"):
            pass
    with pytest.raises(ValueError, match="unknown op 'attention'"):
        with ops.use(attention="sdpa"):
            pass


def test_an_explicit_choice_that_cannot_run_warns_once_per_bucket(extra_impl):
    extra_impl(impls.Implementation("bfe_attention", "picky", reference.bfe_attention,
                                    check=lambda *a, **k: "too picky"))
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 1.0})), \
            ops.use(bfe_attention="picky"):
        with pytest.warns(RuntimeWarning, match="'picky' .* cannot run this call: too picky; "
                                                "running 'sdpa' instead"):
            _, ran = run_bfe(*bfe_args())
        assert ran.impl == "sdpa" and ran.source == "use(), fallback"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run_bfe(*bfe_args(seed=3))  # same bucket: said once
        with pytest.warns(RuntimeWarning, match="too picky"):
            run_bfe(*bfe_args(B=7))  # another bucket


def test_a_kernel_on_a_cpu_tensor_falls_back_with_a_warning():
    with tuning.use_timer(FakeTimer({"reference": 1.0, "sdpa": 5.0})), \
            ops.use(bfe_attention="cuda_tc"):
        with pytest.warns(RuntimeWarning, match="'cuda_tc' .* cannot run this call: "):
            _, ran = run_bfe(*bfe_args())
    assert ran.impl == "reference"


def test_a_decline_at_run_time_hands_over_with_a_warning(extra_impl):
    def flaky(*args, **kw):
        raise ImplementationDeclined("misaligned view")

    extra_impl(impls.Implementation("bfe_attention", "flaky", flaky, fallback="sdpa"))
    with ops.use(bfe_attention="flaky"):
        with pytest.warns(RuntimeWarning, match="'flaky' declined this call \\(misaligned "
                                                "view\\); running 'sdpa' instead"):
            _, ran = run_bfe(*bfe_args())
    assert ran.impl == "sdpa"


def test_mtlkit_kernels_0_rules_out_every_kernel(monkeypatch):
    monkeypatch.setenv("MTLKIT_KERNELS", "0")
    for op in ops.OPS:
        names = ops.implementations(op, device="cuda")
        assert all(not impls.get(op, n).kernel for n in names) and "reference" in names
        why = impls.get(op, "cuda").unavailable("cuda")
        assert why is not None
        if ops.HAS_CUDA_OPS and not ops.GLUE_ERRORS:
            assert why == "MTLKIT_KERNELS=0"


# --------------------------------------------------------------------------- the cache
def test_cache_is_written_and_read(fresh_tuning):
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 1.0})):
        run_bfe(*bfe_args())
    data = json.loads(fresh_tuning.read_text())
    assert data["version"] == tuning.CACHE_VERSION
    ((key, rec),) = data["entries"].items()
    assert rec["choice"] == "sdpa" and rec["times_ms"] == {"reference": 5.0, "sdpa": 1.0}
    assert key.startswith("bfe_attention | cpu | torch ") and "| float32 | grad |" in key
    tuning.reset()  # a new process: only the file remembers
    with tuning.use_timer(FakeTimer(check=lambda: pytest.fail("measured despite the cache"))):
        _, ran = run_bfe(*bfe_args())
    assert ran.impl == "sdpa" and ran.source == "auto: cache"


def test_cache_merges_what_another_process_wrote(fresh_tuning):
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 1.0})):
        run_bfe(*bfe_args())
        data = json.loads(fresh_tuning.read_text())
        data["entries"]["other | key"] = dict(next(iter(data["entries"].values())))
        fresh_tuning.write_text(json.dumps(data))
        run_bfe(*bfe_args(B=9))
    keys = json.loads(fresh_tuning.read_text())["entries"]
    assert len(keys) == 3 and "other | key" in keys


@pytest.mark.parametrize("content,match", [
    ("{not json", "cannot be read"),
    (json.dumps({"version": 0, "entries": {}}), "version 0"),
    (json.dumps([1, 2]), "not an mtlkit tuning cache"),
    (json.dumps({"version": 1, "entries": {"k": {"op": "x"}}}), "malformed"),
])
def test_a_corrupt_or_stale_cache_warns_once_and_is_rewritten(fresh_tuning, content, match):
    fresh_tuning.parent.mkdir(parents=True)
    fresh_tuning.write_text(content)
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 1.0})):
        with pytest.warns(RuntimeWarning, match=f"ignoring the op tuning cache .*{match}.*"
                                                "rewritten"):
            _, ran = run_bfe(*bfe_args())
        assert ran.impl == "sdpa"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run_bfe(*bfe_args(B=9))
    data = json.loads(fresh_tuning.read_text())
    assert data["version"] == tuning.CACHE_VERSION and len(data["entries"]) == 2


def test_an_unwritable_cache_warns_once(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MTLKIT_CACHE", str(blocker))  # a file where a folder should be
    tuning.reset()
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 1.0})):
        with pytest.warns(RuntimeWarning, match="cannot write the op tuning cache"):
            _, ran = run_bfe(*bfe_args())
        assert ran.impl == "sdpa"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run_bfe(*bfe_args(B=9))


# --------------------------------------------------------------------------- static table
def test_mtlkit_tune_0_uses_the_static_table(monkeypatch, fresh_tuning):
    monkeypatch.setenv("MTLKIT_TUNE", "0")
    with tuning.use_timer(FakeTimer(check=lambda: pytest.fail("measured under MTLKIT_TUNE=0"))):
        _, ran = run_bfe(*bfe_args())
        assert ran.impl == "sdpa" and ran.source == "auto: static"
        with dispatch.recording() as log:
            q = torch.randn(1, 2, 5, 4)
            ops.tpp_attention(q, q, q, torch.ones(1, 2))
            ops.ifb(torch.rand(1, 4, 4), torch.randn(1, 4, 3), 0.3, iters=2)
            ops.hdc_conv(torch.randn(1, 2, 4, 4), [torch.randn(2, 1, 3, 3)], None,
                         [torch.randn(2, 2)], None, dilations=(1,))
    assert {r.op: r.impl for r in log} == {"tpp_attention": "sdpa", "ifb": "reference",
                                           "hdc_conv": "reference"}
    assert not fresh_tuning.exists()
    # the table of benchmarks/RESULTS.md (H100): kernels where they won
    S = tuning.static_choice
    assert S("ifb", torch.float32, True) == "cuda" and S("ifb", torch.bfloat16, False) == \
        "reference"
    assert S("hdc_conv", torch.bfloat16, True) == S("hdc_conv", torch.float16, True) == "cuda"
    assert S("hdc_conv", torch.float32, True) == S("hdc_conv", torch.bfloat16, False) == \
        "reference"
    assert S("bfe_attention", torch.bfloat16, True) == S("tpp_attention", torch.float32,
                                                         False) == "sdpa"


def test_retuning_measures_again_even_when_cached(monkeypatch):
    timer = FakeTimer({"reference": 5.0, "sdpa": 1.0})
    with tuning.use_timer(timer):
        run_bfe(*bfe_args())
        monkeypatch.setenv("MTLKIT_TUNE", "0")
        with tuning.retuning():
            run_bfe(*bfe_args())
            run_bfe(*bfe_args())  # once per block
    assert len(timer.calls) == 4


# --------------------------------------------------------------------------- never disturbs
def test_measuring_draws_nothing_from_the_global_rng():
    args, kw = bfe_args()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with tuning.use_timer(FakeTimer({"reference": 5.0, "sdpa": 1.0})):
        out, ran = run_bfe(args, kw)
    assert ran.source == "auto: measured"
    assert torch.equal(torch.get_rng_state(), state)
    with ops.use(bfe_attention=ran.impl):  # and the real call ran on the real inputs
        assert torch.equal(out, ops.bfe_attention(*args, **kw))
    assert all(a.grad is None for a in args)  # nothing accumulated into the caller's tensors


def test_no_timing_under_functorch_or_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    never = FakeTimer(check=lambda: pytest.fail("measured under a transform"))
    q = torch.randn(3, 2, 4, 5, 4)  # a batch of 3 calls under vmap
    mw = torch.ones(1, 4)
    with tuning.use_timer(never), dispatch.recording() as log:
        out = torch.func.vmap(lambda x: ops.tpp_attention(x, x, x, mw))(q)
        assert out.shape == q.shape
        with FakeTensorMode():
            f = torch.randn(2, 4, 5, 4)
            assert ops.tpp_attention(f, f, f, torch.ones(1, 4)).shape == f.shape
    assert {r.source for r in log} == {"auto: static"}
    assert tuning.decisions() == {}  # a static choice is not remembered


def test_no_timing_while_torch_compile_traces():
    def not_compiling() -> None:
        assert not torch.compiler.is_compiling()

    timer = FakeTimer({"reference": 5.0, "sdpa": 1.0}, check=not_compiling)
    q = torch.randn(1, 3, 6, 4, requires_grad=True)
    mw = torch.randn(3, 3)

    def f(x):
        return ops.tpp_attention(x, x, x, mw).sum()

    with tuning.use_timer(timer), dispatch.recording() as log:
        out = torch.compile(f, backend="eager")(q)
        out.backward()
    assert {r.impl for r in log} == {"sdpa"} and len(timer.calls) == 2
    torch.testing.assert_close(out, f(q))


def test_default_timer_warms_up_and_takes_a_median_on_the_cpu():
    calls = []
    ms = tuning.default_timer("x", lambda: calls.append(1), torch.device("cpu"))
    assert ms >= 0 and 4 <= len(calls) <= 6  # 1 warm-up + 3 to 5 timed runs
    slow = []

    def sleepy():
        slow.append(1)
        import time

        time.sleep(0.4)

    assert tuning.default_timer("y", sleepy, torch.device("cpu")) >= 400
    assert len(slow) == 4  # past ~1 s: 3 timed runs only
