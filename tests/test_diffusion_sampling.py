"""Samplers: Euler/Heun integration, classifier-free guidance batching, interval, trajectories, seeds."""

from __future__ import annotations

import pytest
import torch

from jitkit.config import DiffusionConfig, ModelConfig, SamplerConfig
from jitkit.diffusion import Denoiser, Trajectory, initial_noise, sample, to_uint8
from jitkit.diffusion.sampling import guidance_scale, network_evaluations
from jitkit.models import JiT


class Counter:
    """A velocity field that counts the images it is evaluated on and the calls."""

    def __init__(self, fn):
        self.fn, self.images, self.calls, self.batches = fn, 0, 0, []

    def __call__(self, z, t, y):
        self.calls += 1
        self.images += z.shape[0]
        self.batches.append((z.shape[0], float(t[0]), y.clone()))
        return self.fn(z, t, y)


def tiny_denoiser(num_classes=4, seed=0):
    torch.manual_seed(seed)
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
        num_classes=num_classes,
    )
    net = JiT(cfg)
    for p in net.parameters():  # non-trivial outputs (the zero init would give x̂ = 0)
        if p.dim() > 1 and p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    return Denoiser(net, DiffusionConfig(), num_classes).eval()


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_constant_velocity_is_integrated_exactly(method):
    c = torch.randn(2, 3, 4, 4)
    z0 = torch.randn(2, 3, 4, 4)
    out = sample(
        lambda z, t, y: c.expand_as(z),
        z0,
        torch.zeros(2, dtype=torch.long),
        SamplerConfig(method=method, steps=7),
        1,
    )
    assert torch.allclose(out, z0 + c, atol=1e-6)


def test_heun_is_exact_for_velocity_linear_in_t_until_the_final_euler_step():
    # v(z, t) = a + b·t  →  z(t) = z0 + a·t + b·t²/2; Heun (trapezoid) is exact for it; Euler is not
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    z0 = torch.randn(1, 3, 4, 4)
    steps = 6
    traj = Trajectory()

    def field(z, t, y):
        return a + b * t.view(-1, 1, 1, 1)

    sample(
        field,
        z0,
        torch.zeros(1, dtype=torch.long),
        SamplerConfig(method="heun", steps=steps),
        1,
        trajectory=traj,
    )
    for k, (tk, zk) in enumerate(zip(traj.t[:steps], traj.z[:steps])):
        assert torch.allclose(zk, z0 + a * tk + b * tk**2 / 2, atol=1e-5), k
    # the final step is Euler, as in the reference: z1 = z_{K−1} + dt·v(t_{K−1})
    tl = traj.t[steps - 1]
    expect = traj.z[steps - 1] + (1 - tl) * (a + b * tl)
    assert torch.allclose(traj.z[-1], expect, atol=1e-5)


def test_network_evaluation_counts():
    for method, steps in (("heun", 5), ("euler", 5), ("heun", 1)):
        cfg = SamplerConfig(method=method, steps=steps)
        f = Counter(lambda z, t, y: torch.zeros_like(z))
        sample(f, torch.zeros(3, 3, 4, 4), torch.zeros(3, dtype=torch.long), cfg, 1)
        assert f.calls == network_evaluations(cfg)


def test_cfg_one_equals_conditional_sampler_with_half_the_work():
    den = tiny_denoiser()
    z0 = initial_noise(4, (3, 8, 8), seed=1)
    y = torch.tensor([0, 1, 2, 3])
    plain = Counter(den.predict)
    a = sample(plain, z0, y, SamplerConfig(steps=5, cfg=1.0), den.null_class)
    guided = Counter(den.predict)
    # cfg 1 inside the interval still equals the conditional result, yet a cfg ≠ 1 doubles the images
    sample(guided, z0, y, SamplerConfig(steps=5, cfg=3.0), den.null_class)
    assert plain.images * 2 == guided.images
    assert all(b[0] == 4 for b in plain.batches) and all(
        (b[2] != den.null_class).all() for b in plain.batches
    )

    # conditional sampler written out by hand (Heun then final Euler)
    ts = torch.linspace(0, 1, 6).tolist()
    z = z0.clone()
    with torch.no_grad():
        for k in range(5):
            t, tn = ts[k], ts[k + 1]
            v1 = den.predict(z, torch.full((4,), t), y)
            if k < 4:
                v2 = den.predict(z + (tn - t) * v1, torch.full((4,), tn), y)
                z = z + (tn - t) * (v1 + v2) / 2
            else:
                z = z + (tn - t) * v1
    assert torch.allclose(a, z, atol=1e-6)


def test_guidance_is_one_batched_forward_and_matches_two_passes():
    den = tiny_denoiser()
    z0 = initial_noise(2, (3, 8, 8), seed=2)
    y = torch.tensor([1, 3])
    f = Counter(den.predict)
    cfg = SamplerConfig(method="euler", steps=4, cfg=2.5, interval=(0.0, 1.0))
    out = sample(f, z0, y, cfg, den.null_class)
    assert f.calls == 4 and all(b[0] == 4 for b in f.batches)  # one forward of 2B per step
    z = z0.clone()
    ts = torch.linspace(0, 1, 5).tolist()
    with torch.no_grad():
        for k in range(4):
            tt = torch.full((2,), ts[k])
            vc = den.predict(z, tt, y)
            vu = den.predict(z, tt, torch.full_like(y, den.null_class))
            z = z + (ts[k + 1] - ts[k]) * (vu + 2.5 * (vc - vu))
    assert torch.allclose(out, z, atol=1e-5)


def test_unconditional_pass_skipped_outside_the_interval():
    f = Counter(lambda z, t, y: torch.zeros_like(z))
    cfg = SamplerConfig(method="euler", steps=10, cfg=3.0, interval=(0.35, 0.75))
    sample(f, torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), cfg, 5)
    for n, t, y in f.batches:
        inside = 0.35 < t < 0.75
        assert n == (4 if inside else 2), t
        assert ((y == 5).sum().item() == 2) == inside


def test_guidance_scale_interval_rule():
    assert guidance_scale(0.5, 3.0, (0.1, 1.0)) == 3.0
    assert guidance_scale(0.1, 3.0, (0.1, 1.0)) == 1.0  # strict lower bound
    assert guidance_scale(0.0, 3.0, (0.0, 1.0)) == 3.0  # low = 0: no lower bound
    assert guidance_scale(1.0, 3.0, (0.0, 1.0)) == 1.0


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("interval", [(0.1, 1.0), (0.2, 0.7), (0.0, 1.0)])
def test_guidance_scale_matches_the_reference_on_grid_times(steps, interval):
    # the reference's rule on its float32 time tensor (denoiser._forward_sample): a grid time that equals a
    # bound in float32 (t = 0.1 with 10 steps) is outside; compared in float64 it would be inside
    from jitkit.diffusion.grids import time_grid

    low, high = interval
    ts = torch.linspace(0.0, 1.0, steps + 1)
    ref = torch.where((ts < high) & ((low == 0) | (ts > low)), 2.9, 1.0).tolist()
    assert [guidance_scale(t, 2.9, interval) for t in time_grid("uniform", steps)] == pytest.approx(ref)
    if steps == 10 and interval == (0.1, 1.0):
        assert ref[1] == 1.0  # the boundary case is in the test


def test_trajectory_records_states_and_predictions():
    den = tiny_denoiser()
    traj = Trajectory()
    steps = 8
    out = sample(
        den.predict,
        initial_noise(2, (3, 8, 8), seed=0),
        torch.tensor([0, 1]),
        SamplerConfig(steps=steps, cfg=2.0),
        den.null_class,
        trajectory=traj,
    )
    t, z, x = traj.stacked()
    assert t.shape == (steps + 1,) and z.shape == (steps + 1, 2, 3, 8, 8) and x.shape == (steps, 2, 3, 8, 8)
    assert torch.equal(z[-1], out)
    # with 1/steps ≥ t_eps the final Euler step lands exactly on the last x-prediction
    assert torch.allclose(x[-1], out, atol=1e-5)


def test_seeded_generation_is_reproducible_and_seed_dependent():
    den = tiny_denoiser()
    y = torch.tensor([0, 1])
    cfg = SamplerConfig(steps=3, cfg=1.5)
    a = sample(den.predict, initial_noise(2, (3, 8, 8), seed=7), y, cfg, den.null_class)
    b = sample(den.predict, initial_noise(2, (3, 8, 8), seed=7), y, cfg, den.null_class)
    c = sample(den.predict, initial_noise(2, (3, 8, 8), seed=8), y, cfg, den.null_class)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_unconditional_model_samples_with_cfg_one():
    den = tiny_denoiser(num_classes=1)
    f = Counter(den.predict)
    out = sample(
        f,
        initial_noise(3, (3, 8, 8), seed=0),
        torch.zeros(3, dtype=torch.long),
        SamplerConfig(steps=4),
        den.null_class,
    )
    assert torch.isfinite(out).all()
    assert all((b[2] == 0).all() for b in f.batches)  # never the null row


def test_to_uint8_rounding():
    z = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, 0.5])
    assert to_uint8(z).tolist() == [0, 0, 128, 255, 255, 191]
