"""The float32 CPU linear backend (jitkit.models.linear): oneDNN agrees with F.linear, falls back where it must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jitkit.config import ModelConfig
from jitkit.models import linear as L
from jitkit.models.jit import JiT

needs_onednn = pytest.mark.skipif(not L.onednn_available(), reason="this torch build has no oneDNN kernels")

TINY = ModelConfig(
    name="tiny",
    img_size=8,
    patch_size=4,
    hidden_size=32,
    depth=2,
    num_heads=2,
    bottleneck_dim=8,
    in_context_len=2,
    in_context_start=1,
    num_classes=3,
)


@pytest.fixture(autouse=True)
def _restore_setting():
    yield
    L.set_cpu_linear_backend(None)


def _grads(fn, x, w, b):
    xs = x.detach().clone().requires_grad_(True)
    ws = w.detach().clone().requires_grad_(True)
    bs = None if b is None else b.detach().clone().requires_grad_(True)
    y = fn(xs, ws, bs)
    g = torch.Generator().manual_seed(7)
    y.backward(torch.randn(y.shape, generator=g))
    return y.detach(), xs.grad, ws.grad, None if bs is None else bs.grad


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24), (24,), (2, 3, 4, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_matches_f_linear_forward_and_backward(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    w = torch.randn(40, 24, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    ref = _grads(F.linear, x, w, b)
    got = _grads(lambda a, ww, bb: L.linear(a, ww, bb, backend="onednn"), x, w, b)
    assert got[0].shape == (*shape[:-1], 40)
    assert (got[3] is None) == (not bias)
    for r, o in zip(ref, got):
        if r is not None:
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_path_really_runs_the_custom_op():
    # the dispatch decision is visible to torch's op-level profiler: onednn → jitkit::onednn_linear, aten → addmm
    x, w, b = torch.randn(6, 16), torch.randn(8, 16), torch.randn(8)
    for backend, op in (("onednn", "jitkit::onednn_linear"), ("aten", "aten::addmm")):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            L.linear(x, w, b, backend=backend)
        names = {e.key for e in prof.key_averages()}
        assert op in names, (backend, sorted(names))


@needs_onednn
def test_strided_input_and_frozen_weight():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(16, 10, generator=g)
    x = base.t().requires_grad_(True)  # [10, 16], not contiguous
    w = torch.randn(12, 16, generator=g)  # frozen: no gradient asked for
    y = L.linear(x, w, None, backend="onednn")
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(10, 16), rtol=1e-5, atol=1e-5)
    assert w.grad is None


@needs_onednn
def test_falls_back_to_torch_for_other_dtypes_devices_and_autocast():
    w = torch.randn(8, 16)
    x64 = torch.randn(4, 16, dtype=torch.float64)
    assert L.linear(x64, w.double(), backend="onednn").dtype == torch.float64
    assert not L._use_onednn(x64, w.double(), None, "onednn")
    x = torch.randn(4, 16)
    assert L._use_onednn(x, w, None, "onednn")
    assert not L._use_onednn(x, w, None, "aten")
    assert not L._use_onednn(torch.randn(0, 16), w, None, "onednn")
    assert not L._use_onednn(x.to("meta"), w.to("meta"), None, "onednn")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not L._use_onednn(x, w, None, "onednn")
        assert L.linear(x, w, backend="onednn").dtype == torch.bfloat16
    assert L.linear(torch.randn(0, 16), w, backend="onednn").shape == (0, 8)


def test_settings_and_errors(monkeypatch):
    with pytest.raises(ValueError, match="one of auto, onednn, aten"):
        L.set_cpu_linear_backend("mkl")
    monkeypatch.setenv("JITKIT_CPU_LINEAR", "fast")
    with pytest.raises(ValueError, match="JITKIT_CPU_LINEAR must be one of"):
        L.cpu_linear_setting()
    monkeypatch.setenv("JITKIT_CPU_LINEAR", "aten")
    assert L.cpu_linear_backend() == "aten"
    L.set_cpu_linear_backend("auto")  # the setter wins over the environment
    assert L.cpu_linear_setting() == "auto"
    with pytest.raises(ValueError, match="received 'blas'"):
        L.use_cpu_linear(nn.Linear(2, 2), "blas")


def test_auto_keeps_onednn_only_when_clearly_faster(monkeypatch):
    monkeypatch.setattr(L, "onednn_available", lambda: True)
    L.set_cpu_linear_backend("auto")
    for t_aten, t_onednn, expect in ((2.0, 1.0, "onednn"), (1.1, 1.0, "aten"), (1.0, 2.0, "aten")):
        monkeypatch.setattr(L, "_resolved", {})
        monkeypatch.setattr(L, "measure_cpu_linear", lambda a=t_aten, o=t_onednn: {"aten": a, "onednn": o})
        assert L.cpu_linear_backend() == expect
    monkeypatch.setattr(L, "onednn_available", lambda: False)
    monkeypatch.setattr(L, "_resolved", {})
    assert L.cpu_linear_backend() == "aten"


def test_auto_times_each_backward_product_on_its_own(monkeypatch):
    monkeypatch.setattr(L, "onednn_available", lambda: True)
    monkeypatch.setattr(L, "_resolved", {})
    monkeypatch.setattr(L, "_resolved_backward", {})
    L.set_cpu_linear_backend("auto")
    monkeypatch.setattr(L, "measure_cpu_linear", lambda: {"aten": 2.0, "onednn": 1.0})
    measured = []

    def backward_times():
        measured.append(1)
        # oneDNN's input gradient clearly faster, its weight gradient (a transposed copy first) slower
        return {"grad_input": {"aten": 2.0, "onednn": 1.0}, "grad_weight": {"aten": 1.0, "onednn": 1.6}}

    monkeypatch.setattr(L, "measure_cpu_linear_backward", backward_times)
    assert L.cpu_linear_backend() == "onednn"
    assert measured == [1]  # resolved with the forward, before any compile trace needs it
    assert L.cpu_linear_backward() == ("onednn", "aten")
    assert measured == [1]  # once per thread count
    # a forward on aten never asks: ATen's own autograd computes its backward
    monkeypatch.setattr(L, "_resolved", {})
    monkeypatch.setattr(L, "measure_cpu_linear", lambda: {"aten": 1.0, "onednn": 1.0})
    assert L.cpu_linear_backend() == "aten" and measured == [1]
    # pinned to onednn: all three products there, nothing measured
    monkeypatch.setattr(L, "_resolved_backward", {})
    L.set_cpu_linear_backend("onednn")
    assert L.cpu_linear_backward() == ("onednn", "onednn") and measured == [1]


@needs_onednn
@pytest.mark.parametrize("choice", [("aten", "aten"), ("onednn", "aten"), ("onednn", "onednn")])
def test_the_backward_runs_each_product_where_it_was_resolved(monkeypatch, choice):
    L.set_cpu_linear_backend("auto")
    monkeypatch.setattr(L, "_resolved_backward", {torch.get_num_threads(): choice})
    calls = []
    pointwise = L._pointwise
    monkeypatch.setattr(L, "_pointwise", lambda *a: calls.append(1) or pointwise(*a))
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(6, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    ref = _grads(F.linear, x, w, b)
    got = _grads(lambda a, ww, bb: L.linear(a, ww, bb, backend="onednn"), x, w, b)
    # one oneDNN product forward, plus one for each backward product resolved to oneDNN
    assert len(calls) == 1 + choice.count("onednn")
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_eager_bf16_inference_runs_on_onednn_with_the_bias_inside(monkeypatch):
    if not L.onednn_bf16_available():  # checked once, before the calls are counted
        pytest.skip("this build's oneDNN computes no bf16 product on this CPU")
    calls = []
    pointwise = L._pointwise
    monkeypatch.setattr(L, "_pointwise", lambda *a: calls.append(a[0].dtype) or pointwise(*a))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 24, generator=g)
    w, b = torch.randn(40, 24, generator=g).bfloat16(), torch.randn(40, generator=g).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.linear(x, w, b)  # what autocast alone computes (ATen's addmm)
        got = L.linear(x, w, b)
    assert calls == [torch.bfloat16]  # on oneDNN, the float32 input cast to bf16 as autocast casts it
    assert got.dtype == ref.dtype == torch.bfloat16 and got.shape == (2, 7, 40)
    torch.testing.assert_close(got.float(), ref.float(), rtol=1e-2, atol=2e-2)  # bf16 sums in another order
    with torch.no_grad():
        torch.testing.assert_close(L.linear(x.bfloat16(), w, b).float(), ref.float(), rtol=1e-2, atol=2e-2)
    assert len(calls) == 2
    # with autograd, float16 autocast, or float32 weights: not this path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        L.linear(x, w, b)
    with torch.no_grad():
        L.linear(x, w.float(), b.float(), backend="aten")
        with torch.autocast("cpu", dtype=torch.float16):
            L.linear(x, w.half(), b.half())
    assert len(calls) == 2


def test_eager_bf16_inference_falls_back_where_onednn_has_no_bf16(monkeypatch):
    def unsupported(*a):
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(L, "_onednn_bf16", None)
    monkeypatch.setattr(L, "_pointwise", unsupported)
    assert not L.onednn_bf16_available()
    x, w = torch.randn(3, 8), torch.randn(5, 8).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(L.linear(x, w), F.linear(x, w))  # F.linear, not the failing op


def test_the_probe_interleaves_its_candidates_after_warming_each_up():
    order = []
    best = L._compare_seconds(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=2
    )
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(best) == {"a", "b"} and all(0 <= v < 1 for v in best.values())


@needs_onednn
def test_jit_on_onednn_matches_aten_and_keeps_its_state_dict():
    torch.manual_seed(0)
    a = L.use_cpu_linear(JiT(TINY), "aten")
    b = L.use_cpu_linear(JiT(TINY), "onednn")
    # non-zero adaLN and final weights, so that every linear contributes to the output
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b.load_state_dict(a.state_dict())
    assert list(a.state_dict()) == list(b.state_dict())
    layers = [m for m in b.modules() if hasattr(m, "cpu_linear")]
    assert len(layers) > 10 and all(m.cpu_linear == "onednn" for m in layers)
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([0, 2, 3])
    out_a, out_b = a(x, t, y), b(x, t, y)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-5, msg=n)


@needs_onednn
@pytest.mark.env_sensitive  # needs a C++ compiler for inductor
def test_onednn_linear_under_torch_compile_matches_eager():
    from jitkit.models.registry import compiler_available

    ok, why = compiler_available(torch.device("cpu"))
    if not ok:
        pytest.skip(f"torch.compile unavailable here: {why}")
    torch.manual_seed(0)
    mlp = L.use_cpu_linear(nn.Sequential(L.Linear(16, 32), nn.SiLU(), L.Linear(32, 8)), "onednn")
    ref = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8))
    ref.load_state_dict(mlp.state_dict())
    compiled = torch.compile(mlp, dynamic=False)
    x = torch.randn(2, 5, 16)
    out_c, out_r = compiled(x), ref(x)
    torch.testing.assert_close(out_c, out_r, rtol=1e-5, atol=1e-5)
    out_c.sum().backward()
    out_r.sum().backward()
    for pc, pr in zip(mlp.parameters(), ref.parameters()):
        torch.testing.assert_close(pc.grad, pr.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.env_sensitive  # needs a C++ compiler for inductor
def test_a_jit_block_compiles_to_one_graph_with_the_process_backend():
    # the process setting is read outside the trace (compile_blocks resolves it): a block stays one graph
    L.set_cpu_linear_backend("onednn")
    assert L.cpu_linear_backend() == "onednn"
    net = JiT(TINY).eval()
    x, c = torch.randn(2, 4, 32), torch.randn(2, 32)
    with torch.no_grad():
        ex = torch._dynamo.explain(net.blocks[0])(x, c, net.rope_cos, net.rope_sin)
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]
    assert any("onednn_linear" in str(n.target) for g in ex.graphs for n in g.graph.nodes)


def test_bf16_probe_measures_unless_switched_off(monkeypatch):
    from jitkit.models import linear as L

    off = L.bf16_linear_speedup(64, 32, 48)  # the suite runs with JITKIT_BF16_PROBE=off (conftest)
    assert off["speedup"] == off["peak_speedup"] == 1.0 and "JITKIT_BF16_PROBE" in off["probe"]
    monkeypatch.delenv("JITKIT_BF16_PROBE")
    monkeypatch.setattr(L, "_bf16_probe", {})
    rec = L.bf16_linear_speedup(64, 32, 48, repeats=1)
    assert rec["fp32_gflops"] > 0 and rec["bf16_gflops"] > 0 and rec["shape"] == [64, 32, 48]
    assert (
        rec["speedup"] == pytest.approx(rec["bf16_gflops"] / rec["fp32_gflops"], rel=0.1)
        and "probe" not in rec
    )


def test_bf16_block_probe_times_the_model_as_it_will_run(monkeypatch):
    """``precision auto`` on a CPU times one block of the model itself in fp32 and bf16: forward + backward
    for training, the bf16-weight forward for sampling; it draws no random numbers from the caller's stream."""
    from conftest import tiny_model_config

    from jitkit.models import linear as L
    from jitkit.models import registry as R

    cfg = tiny_model_config()
    off = R.bf16_block_speedup(cfg, 4, train=True)
    assert off["speedup"] == 1.0 and "JITKIT_BF16_PROBE=off" in off["probe"]
    monkeypatch.delenv("JITKIT_BF16_PROBE")
    monkeypatch.setattr(R, "_block_probe", {})
    # fast bf16 units, as on AMX (the peak itself is measured in the test above): the block is timed
    monkeypatch.setattr(L, "_bf16_peak", {torch.get_num_threads(): 7.0})
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    tr = R.bf16_block_speedup(cfg, 4, train=True, repeats=1)
    inf = R.bf16_block_speedup(cfg, 4, train=False, repeats=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    tokens = cfg.num_patches + cfg.in_context_len
    assert tr["probe"] == f"one block, forward+backward, [4, {tokens}, {cfg.hidden_size}]"
    assert inf["probe"].startswith("one block, inference")
    for rec in (tr, inf):
        assert rec["fp32_ms"] > 0 and rec["bf16_ms"] > 0 and rec["peak_speedup"] > 0
        assert rec["speedup"] == pytest.approx(rec["fp32_ms"] / rec["bf16_ms"], rel=0.05)
    assert len(R._block_probe) == 2  # cached per shape and mode
    choice, rec = R.precision_for_model("auto", "cpu", cfg, 4, train=True)
    assert choice == ("bf16" if rec["speedup"] >= 1.2 and rec["peak_speedup"] >= 2 else "fp32")


def test_block_not_timed_without_fast_bf16_units(monkeypatch):
    """Where the large product rules bf16 out, ``auto`` is fp32 whatever the model: the block is not timed."""
    from conftest import tiny_model_config

    from jitkit.models import linear as L
    from jitkit.models import registry as R

    monkeypatch.delenv("JITKIT_BF16_PROBE")
    monkeypatch.setattr(R, "_block_probe", {})
    monkeypatch.setattr(L, "_bf16_peak", {torch.get_num_threads(): 1.4})
    rec = R.bf16_block_speedup(tiny_model_config(), 4, train=True)
    assert rec["speedup"] is None and rec["peak_speedup"] == 1.4 and "not timed" in rec["probe"]
    assert R._block_probe == {}
    choice, rec = R.precision_for_model("auto", "cpu", tiny_model_config(), 4, train=True)
    assert choice == "fp32" and rec["reason"] == "measured"


@pytest.mark.parametrize(
    "grad, autocast, split", [(True, True, True), (False, True, False), (True, False, False)]
)
def test_compiled_autocast_training_adds_the_bias_after_the_product(grad, autocast, split):
    """Inside ``torch.compile`` with autograd on under CPU autocast, the bias is added after the product (for
    inductor to fuse; ATen's addmm would first copy the broadcast bias into every output); with no autograd
    (frozen inference graphs) or in float32 the product keeps its bias. The graph is captured, not compiled."""
    from jitkit.models.linear import Linear

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    lin = Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=grad)

    def f(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return lin(x)

    with torch.set_grad_enabled(grad):
        out = torch.compile(f, backend=capture, fullgraph=True)(x)
        ref = f(x)  # eager: F.linear with the bias inside
    linears = [n for n in graphs[0].graph.nodes if n.op == "call_function" and n.target is F.linear]
    assert len(linears) == 1
    has_bias = len(linears[0].args) > 2 or linears[0].kwargs.get("bias") is not None
    assert has_bias is not split
    tol = 2e-2 if autocast else 1e-6
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    if grad:
        w = torch.randn(4, 16)
        (out.float() * w).sum().backward()
        got = lin.bias.grad.clone()
        lin.bias.grad = None
        (ref.float() * w).sum().backward()
        torch.testing.assert_close(got, lin.bias.grad, rtol=tol, atol=tol)
    torch._dynamo.reset()
