import math

import pytest
import torch

from jitkit.diffusion.ddpm import DDPMSchedule


def test_linear_schedule_closed_forms():
    T, b0, b1 = 200, 1e-4, 0.02
    s = DDPMSchedule(T, b0, b1)
    betas = [b0 + (b1 - b0) * i / (T - 1) for i in range(T)]
    abar_T = math.prod(1 - b for b in betas)
    assert s.betas[0].item() == pytest.approx(b0)
    assert s.betas[-1].item() == pytest.approx(b1)
    assert s.alphas_cumprod[-1].item() == pytest.approx(abar_T, rel=1e-5)
    # ᾱ_T of this (short) schedule is far from 0: x_T keeps √ᾱ_T ≈ 0.36 of the signal
    assert 0.12 < abar_T < 0.15
    for t in (1, 57, 199):
        ab, ab_prev = math.prod(1 - b for b in betas[: t + 1]), math.prod(1 - b for b in betas[:t])
        assert s.alphas_cumprod_prev[t].item() == pytest.approx(ab_prev, rel=1e-5)
        assert s.posterior_variance[t].item() == pytest.approx(betas[t] * (1 - ab_prev) / (1 - ab), rel=1e-5)
    assert s.posterior_variance[0].item() == 0.0
    assert bool((s.posterior_variance <= s.betas + 1e-12).all())


def test_q_sample_moments():
    s = DDPMSchedule(200)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 2.0)
    t = torch.full((200_000,), 120, dtype=torch.long)
    xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    ab = s.alphas_cumprod[120].item()
    assert xt.mean().item() == pytest.approx(2.0 * math.sqrt(ab), abs=0.01)
    assert xt.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.01)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ancestral_sampling_reproduces_gaussian(variance):
    """With the analytic optimal ε-predictor of x0 ~ N(μ, σ²), E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱσ² + 1 − ᾱ),
    ancestral sampling from the exact x_{T−1} marginal returns N(μ, σ²) (up to the variance choice)."""
    mu, sd, n = 0.7, 0.5, 40_000
    s = DDPMSchedule(200)
    abar = s.alphas_cumprod

    def eps_fn(x, t, y):
        a = abar[t].reshape(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sd**2 + 1 - a)

    g = torch.Generator().manual_seed(1)
    aT = abar[-1]
    noise = aT.sqrt() * mu + (aT * sd**2 + 1 - aT).sqrt() * torch.randn(n, 1, generator=g)
    out = s.sample(eps_fn, noise, torch.zeros(n, dtype=torch.long), variance=variance, generator=g)
    assert out.mean().item() == pytest.approx(mu, abs=0.01)
    assert out.std().item() == pytest.approx(sd, rel=0.03)


def test_loss_is_zero_for_the_true_noise_and_bad_inputs():
    s = DDPMSchedule(50)
    x0 = torch.randn(8, 3, 4, 4)

    # an oracle that recovers ε exactly from x_t, knowing x0: ε = (x_t − √ᾱ x0)/√(1−ᾱ)
    def oracle(xt, t, y):
        a = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (xt - a.sqrt() * x0) / (1 - a).sqrt()

    assert s.loss(oracle, x0, torch.zeros(8, dtype=torch.long)).item() < 1e-8
    assert s.loss(lambda xt, t, y: torch.zeros_like(xt), x0, None).item() == pytest.approx(1.0, abs=0.2)
    with pytest.raises(ValueError, match="beta"):
        DDPMSchedule(10, 0.5, 0.1)
    with pytest.raises(ValueError, match="variance"):
        s.sample(oracle, x0, None, variance="learned")


def test_cosine_schedule_is_nichol_and_dhariwals_alpha_bar():
    import math

    T, s = 200, 0.008
    sch = DDPMSchedule(T, kind="cosine")

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (1, 50, 100, 150, 190):  # ᾱ after t steps (index t − 1), away from the β ≤ 0.999 clip at the end
        assert abs(float(sch.alphas_cumprod[t - 1]) - f(t) / f(0)) < 1e-6, t
    assert float(sch.alphas_cumprod[-1]) < 1e-6 and float(sch.betas.max()) <= 0.999 + 1e-7
    with pytest.raises(ValueError, match="linear or cosine, found 'sigmoid'"):
        DDPMSchedule(T, kind="sigmoid")


def test_ddim_sampler_lands_on_the_data_with_the_exact_eps():
    # data = one image c: the exact ε̂(x_t) = (x_t − √ᾱ_t c)/√(1 − ᾱ_t); deterministic DDIM then ends on c
    sch = DDPMSchedule(50)
    c = torch.linspace(-1, 1, 3 * 4 * 4).view(1, 3, 4, 4)

    def eps(x, t, y):
        abar = sch.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * c) / (1 - abar).sqrt()

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sch.sample(eps, noise, torch.zeros(2, dtype=torch.long), variance="ddim")
    assert torch.allclose(out, c.expand(2, -1, -1, -1), atol=1e-4)
    again = sch.sample(eps, noise, torch.zeros(2, dtype=torch.long), variance="ddim")
    assert torch.equal(out, again)  # no noise drawn
    with pytest.raises(ValueError, match="'posterior', 'beta', 'ddim' or 'clipped', found 'x'"):
        sch.sample(eps, noise, torch.zeros(2, dtype=torch.long), variance="x")


def test_clipped_sampler_is_the_posterior_mean_of_the_clipped_x0():
    """ "clipped" (diffusers' DDPM default): μ̃ of x̂_0 clipped to [−1, 1]. Unclipped μ̃ is Ho et al.'s μ_θ; with
    the data inside [−1, 1] and the exact ε it lands on the data like the others, and an ε that points outside
    [−1, 1] gives samples inside it where the unclipped sampler leaves."""
    sch = DDPMSchedule(50)
    g = torch.Generator().manual_seed(0)
    x_t, eps_hat = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 20, 49])
    # the same in exact arithmetic; float32 loses ~1e-4 relative where 1 − ᾱ_0 = β_0 = 1e-4 divides
    unclipped = sch.posterior_mean(x_t, t, eps_hat, clip=None)
    torch.testing.assert_close(unclipped, sch.p_mean(x_t, t, eps_hat), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(sch.posterior_mean(x_t, t, eps_hat), sch.p_mean(x_t, t, eps_hat), atol=1e-2)
    c = torch.linspace(-0.9, 0.9, 3 * 4 * 4).view(1, 3, 4, 4)

    def exact(x, t, y):
        abar = sch.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * c) / (1 - abar).sqrt()

    noise = torch.randn(2, 3, 4, 4, generator=g)
    y = torch.zeros(2, dtype=torch.long)
    out = sch.sample(exact, noise, y, variance="clipped", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, c.expand(2, -1, -1, -1), atol=1e-3, rtol=0)

    def outside(x, t, y):  # the ε of an image at 3: x̂_0 = 3 wherever the trajectory is
        abar = sch.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * 3.0) / (1 - abar).sqrt()

    clipped = sch.sample(outside, noise, y, variance="clipped", generator=torch.Generator().manual_seed(1))
    plain = sch.sample(outside, noise, y, variance="posterior", generator=torch.Generator().manual_seed(1))
    assert clipped.max().item() <= 1.0 + 1e-5 and plain.min().item() > 2.9
