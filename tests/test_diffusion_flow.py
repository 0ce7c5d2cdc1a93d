"""The flow-matching objective: conversions, the nine pred/loss combinations, label drop, t sampling."""

from __future__ import annotations

import itertools

import pytest
import torch

from jitkit.config import DiffusionConfig, ModelConfig
from jitkit.diffusion import Denoiser
from jitkit.diffusion.flow import convert, drop_labels, flow_loss, interpolate, sample_t, target
from jitkit.models import JiT

KINDS = ("x", "eps", "v")


def _sample(B=8, shape=(3, 4, 4), lo=0.1, hi=0.9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    e = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64) * (hi - lo) + lo
    return x, e, t, interpolate(x, e, t)


@pytest.mark.parametrize("src,dst", list(itertools.permutations(KINDS, 2)))
def test_conversions_are_exact_inverses(src, dst):
    x, e, t, z = _sample()
    truth = {"x": x, "eps": e, "v": x - e}
    # converting the truth of one kind gives the truth of the other
    assert torch.allclose(convert(truth[src], src, dst, z, t), truth[dst], atol=1e-10)
    # and back again
    back = convert(convert(truth[src], src, dst, z, t), dst, src, z, t)
    assert torch.allclose(back, truth[src], atol=1e-10)


def test_velocity_formulas_of_the_notebook():
    # x-prediction: v = (x̂ − z)/(1 − t);  ε-prediction: v = (z − ε̂)/t  (no clamp hit for t in [0.1, 0.9])
    x, e, t, z = _sample()
    tb = t.view(-1, 1, 1, 1)
    xh, eh = torch.randn_like(x), torch.randn_like(e)
    assert torch.allclose(convert(xh, "x", "v", z, t), (xh - z) / (1 - tb))
    assert torch.allclose(convert(eh, "eps", "v", z, t), (z - eh) / tb)


def test_clamp_of_the_reference_near_t_equal_one():
    x, e, _, _ = _sample()
    t = torch.full((x.shape[0],), 0.99, dtype=torch.float64)
    z = interpolate(x, e, t)
    v = convert(x, "x", "v", z, t, t_eps=0.05)
    assert torch.allclose(v, (x - z) / 0.05)  # divided by max(1 − t, t_eps) = 0.05, not 0.01


@pytest.mark.parametrize("pred,loss", list(itertools.product(KINDS, KINDS)))
def test_nine_combinations_give_finite_losses_and_zero_at_truth(pred, loss):
    x, e, t, z = _sample(lo=0.0, hi=1.0)
    t[0], t[1] = 1e-4, 1 - 1e-4  # the ends of the path must stay finite thanks to the clamps
    z = interpolate(x, e, t)
    out = torch.randn_like(x)
    val = flow_loss(out, x, e, z, t, pred, loss)
    assert torch.isfinite(val) and val > 0
    assert flow_loss(target(x, e, z, t, pred), x, e, z, t, pred, loss).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("pred,loss", list(itertools.product(KINDS, KINDS)))
def test_denoiser_loss_trains_a_tiny_jit(pred, loss):
    torch.manual_seed(0)
    cfg = ModelConfig(
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
    den = Denoiser(JiT(cfg), DiffusionConfig(pred=pred, loss=loss), cfg.num_classes).train()
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2, 0])
    val = den.loss(x, y)
    assert torch.isfinite(val)
    val.backward()
    grads = [p.grad for p in den.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_reference_loss_formula_for_x_pred_v_loss():
    # loss = mean((v − v̂)²), v = (x − z)/max(1−t, t_eps), v̂ = (x̂ − z)/max(1−t, t_eps)
    x, e, t, z = _sample()
    xh = torch.randn_like(x)
    d = (1 - t).clamp_min(0.05).view(-1, 1, 1, 1)
    expect = (((x - z) / d - (xh - z) / d) ** 2).mean()
    assert flow_loss(xh, x, e, z, t, "x", "v").item() == pytest.approx(expect.item(), rel=1e-12)


def test_logit_normal_t():
    g = torch.Generator().manual_seed(0)
    t = sample_t(200_000, -0.8, 0.8, generator=g)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() + 0.8) < 0.01 and abs(logit.std().item() - 0.8) < 0.01
    assert ((t > 0) & (t < 1)).all()


def test_label_drop_rate_and_null_class():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (100_000,), generator=g)
    d = drop_labels(y, 10, 0.1, generator=g)
    frac = (d == 10).float().mean().item()
    assert abs(frac - 0.1) < 0.005
    assert torch.equal(d[d != 10], y[d != 10])


def test_unconditional_denoiser_never_drops_labels():
    cfg = ModelConfig(
        name="u",
        img_size=8,
        patch_size=4,
        hidden_size=32,
        depth=2,
        num_heads=2,
        bottleneck_dim=8,
        in_context_len=0,
        in_context_start=0,
        num_classes=1,
    )
    seen = []
    net = JiT(cfg)
    net.register_forward_pre_hook(lambda m, args: seen.append(args[2].clone()))
    den = Denoiser(net, DiffusionConfig(label_drop_prob=0.5), 1).train()
    for _ in range(5):
        den.loss(torch.zeros(16, 3, 8, 8), torch.zeros(16, dtype=torch.long))
    assert all((s == 0).all() for s in seen)
