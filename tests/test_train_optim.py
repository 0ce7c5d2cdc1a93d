"""The optimiser: parameter groups, the factory's implementations, and AdamWEMA (AdamW and both EMA updates
in one pass), which must equal torch's AdamW followed by EMA.update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jitkit.train.ema import EMA
from jitkit.train.optim import AdamWEMA, adamw_ema_kernel, make_optimizer, param_groups


def test_weight_decay_groups_skip_biases_and_vectors():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    assert len(param_groups(m, 0.0)) == 1
    decay, no_decay = param_groups(m, 0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("impl", ["fused", "foreach", "loop"])
def test_make_optimizer_implementations_take_the_same_step(impl: str) -> None:
    """fused, foreach and loop are one AdamW: the same weights after a step, within float rounding."""
    torch.manual_seed(0)
    ref, m = nn.Linear(4, 3), nn.Linear(4, 3)
    m.load_state_dict(ref.state_dict())
    w0 = ref.weight.detach().clone()
    x = torch.randn(5, 4)
    opts = []
    for kind, model in (("loop", ref), (impl, m)):
        opt = make_optimizer(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05, impl=kind)
        model(x).square().mean().backward()
        opt.step()
        opts.append(opt)
    want = {"fused": (True, False), "foreach": (False, True), "loop": (False, False)}[impl]
    assert (bool(opts[1].defaults["fused"]), bool(opts[1].defaults["foreach"])) == want
    assert not torch.equal(ref.weight, w0)  # the step moved the weights
    torch.testing.assert_close(m.weight, ref.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m.bias, ref.bias, rtol=1e-6, atol=1e-7)


def test_make_optimizer_rejects_unknown_impl_and_fused_ema_without_ema() -> None:
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="fused, foreach, loop, fused-ema.*'adam'"):
        make_optimizer(m, lr=1e-3, impl="adam")
    with pytest.raises(ValueError, match="needs the EMA"):
        make_optimizer(m, lr=1e-3, impl="fused-ema")
    opt = make_optimizer(m, lr=1e-3, impl="fused-ema", ema=EMA(m))
    assert isinstance(opt, AdamWEMA) and opt.updates_ema


class _Toy(nn.Module):
    """Matrices, vectors, a non-contiguous parameter, an unused parameter and a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 4)
        self.scale = nn.Parameter(torch.randn(4))
        self.strided = nn.Parameter(torch.randn(4, 3).t())  # [3, 4], not contiguous
        self.unused = nn.Parameter(torch.randn(3))
        self.frozen = nn.Parameter(torch.randn(2), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x) * self.scale  # [B, 4]
        return (h @ self.strided.t()).sum(-1) + self.frozen.sum()


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = _Toy()
    b = _Toy()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.strided.set_(a.strided.detach().clone().t().contiguous().t())  # keep the strided layout
    return a, b


def _run(opt_ref, ema_ref, model_ref, opt, model, steps: int, lrs: list[float]) -> None:
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.randn(6, 5, generator=g)
        for o, m in ((opt_ref, model_ref), (opt, model)):
            for group in o.param_groups:
                group["lr"] = lrs[i]
            o.zero_grad(set_to_none=True)
            (m(x) ** 2).mean().backward()
            o.step()
        ema_ref.update(model_ref)


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
def test_adamw_ema_equals_adamw_then_ema_update(kernel: str) -> None:
    if kernel == "compiled":
        from jitkit.models.registry import compiler_available

        ok, why = compiler_available("cpu")
        if not ok:
            pytest.skip(f"torch.compile needs a C++ compiler here: {why}")
    ref, fused = _pair()
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.05, "eps": 1e-8}
    opt_ref = torch.optim.AdamW(param_groups(ref, 0.05), foreach=False, **kw)
    ema_ref = EMA(ref, (0.9, 0.5), warmup=True)
    ema = EMA(fused, (0.9, 0.5), warmup=True)
    opt = AdamWEMA(
        param_groups(fused, 0.05),
        ema=ema,
        model=fused,
        kernel=adamw_ema_kernel if kernel == "eager" else None,
        **kw,
    )
    assert opt.updates_ema
    with torch.no_grad():  # the frozen parameter changes outside the optimiser: both EMAs must copy it
        for m in (ref, fused):
            m.frozen.add_(1.0)
    _run(opt_ref, ema_ref, ref, opt, fused, steps=4, lrs=[1e-2, 2e-2, 5e-3, 1e-2])

    moved = 0
    for (name, p_ref), p in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(p_ref, ema_ref.averaged(1)[name]))
    assert moved >= 3  # the comparison is not between untouched weights
    assert ema.num_updates == ema_ref.num_updates == 4
    for which in (1, 2):
        for name, e_ref in ema_ref.averaged(which).items():
            torch.testing.assert_close(
                ema.averaged(which)[name], e_ref, rtol=1e-5, atol=1e-6, msg=f"ema{which} {name}"
            )
    # AdamW's own state, in torch's format (step, exp_avg, exp_avg_sq); the unused parameter has none
    for p_ref, p in zip(ref.parameters(), fused.parameters()):
        if p_ref is ref.unused or not p_ref.requires_grad:
            assert not opt.state[p]
            continue
        assert float(opt.state[p]["step"]) == float(opt_ref.state[p_ref]["step"]) == 4
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][k], opt_ref.state[p_ref][k], rtol=1e-5, atol=1e-8)


def test_adamw_ema_state_dict_loads_into_torch_adamw_and_back() -> None:
    """Checkpoints stay interchangeable: AdamWEMA's state continues identically in torch's AdamW."""
    ref, fused = _pair(3)
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.0}
    ema = EMA(fused, (0.9, 0.5))
    opt = AdamWEMA(param_groups(fused, 0.0), ema=ema, model=fused, kernel=adamw_ema_kernel, **kw)
    opt_ref = torch.optim.AdamW(param_groups(ref, 0.0), foreach=False, **kw)
    ema_ref = EMA(ref, (0.9, 0.5))
    _run(opt_ref, ema_ref, ref, opt, fused, steps=2, lrs=[1e-2, 1e-2])
    # swap the implementations: torch's AdamW takes AdamWEMA's state and vice versa
    opt2 = torch.optim.AdamW(param_groups(fused, 0.0), foreach=False, **kw)
    opt2.load_state_dict(opt.state_dict())
    ema2 = EMA(ref, (0.9, 0.5))
    ema2.load_state_dict(ema_ref.state_dict())
    opt_ref2 = AdamWEMA(param_groups(ref, 0.0), ema=ema2, model=ref, kernel=adamw_ema_kernel, **kw)
    opt_ref2.load_state_dict(opt_ref.state_dict())
    _run(opt_ref2, EMA(ref), ref, opt2, fused, steps=2, lrs=[1e-2, 1e-2])
    for (name, a), b in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert float(opt2.state[fused.lin.weight]["step"]) == 4


def test_adamw_ema_rejects_a_foreign_ema_or_parameter() -> None:
    a, b = _pair()
    with pytest.raises(ValueError, match="another model"):
        AdamWEMA(a.parameters(), ema=EMA(nn.Linear(2, 2)), model=a)
    with pytest.raises(ValueError, match="not one of the model's"):
        AdamWEMA(list(a.parameters()) + [nn.Parameter(torch.zeros(2))], ema=EMA(a), model=a)


def _stepped(opt_factory, model):
    opt = opt_factory(model)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return opt


@pytest.mark.parametrize("saved_fused,now_fused", [(True, False), (False, True)])
def test_resumed_step_counters_sit_where_this_optimizer_keeps_them(saved_fused, now_fused):
    """A state saved by a fused optimiser (step on the parameter's device) loads into a foreach one with the
    step on the CPU, and the other way round — whatever the saving run's implementation was. The parameters
    live on the meta device here, so that "the parameter's device" differs from the CPU on a CPU-only
    machine."""
    from jitkit.train.optim import load_optimizer_state

    torch.manual_seed(0)
    src = torch.nn.Linear(4, 3)
    saved = _stepped(lambda m: make_optimizer(m, lr=1e-3, impl="foreach"), src).state_dict()
    for g in saved["param_groups"]:
        g["fused"], g["foreach"] = saved_fused, not saved_fused
    dst = torch.nn.Linear(4, 3, device="meta")
    opt = make_optimizer(dst, lr=1e-3, impl="foreach")
    for g in opt.param_groups:  # this run's implementation (set by hand: no fused kernels on meta)
        g["fused"], g["foreach"] = now_fused, not now_fused
    load_optimizer_state(dst, opt, saved, sharded=False)
    want = torch.device("meta") if now_fused else torch.device("cpu")
    for p in dst.parameters():
        step = opt.state[p]["step"]
        assert step.device == want and step.dtype == torch.float32 and step.numel() == 1
        assert opt.state[p]["exp_avg"].device == torch.device("meta")  # moments follow the parameters
    assert all(g["fused"] is now_fused for g in opt.param_groups)  # this run keeps its own implementation
