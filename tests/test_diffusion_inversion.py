"""ODE inversion: sampling from the inverted noise reconstructs the input on closed-form flows, the first
iterate is DDIM inversion, directions a flow discards do not blow up, evaluation counts, bad arguments."""

from __future__ import annotations

import pytest
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.inversion import default_sweeps, inversion_evaluations, invert
from jitkit.diffusion.sampling import sample

MU, S = 0.3, 0.5


def _t(t, z):
    return t.view(-1, *([1] * (z.dim() - 1))).to(z.dtype)


def gaussian_field(t_eps: float, y_scale: float = 0.0):
    """The exact flow of x ~ N(MU + y_scale·y, S²) per pixel (∂x̂/∂z = c·I with 0 < c: invertible)."""

    def v(z, t, y):
        tt = _t(t, z)
        mu = MU + y_scale * y.view(-1, 1, 1, 1).to(z.dtype)
        x = mu + tt * S * S / (tt * tt * S * S + (1 - tt) ** 2) * (z - tt * mu)
        return (x - z) / torch.clamp(1 - tt, min=t_eps)

    return v


@pytest.mark.parametrize("method", ["euler", "heun", "dpm++2m", "dpm++3m"])
@pytest.mark.parametrize("grid", ["uniform", "logsnr"])
def test_inversion_then_sampling_reconstructs_the_input(method, grid):
    torch.manual_seed(0)
    field = gaussian_field(0.05)
    y = torch.zeros(4, dtype=torch.long)
    cfg = SamplerConfig(method=method, steps=8, time_grid=grid)
    z0 = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    x = sample(field, z0, y, cfg, 1)  # an image the sampler can make
    # multistep solvers: each backward sweep takes the step before's x̂ from the last sweep (Gauss–Seidel);
    # on this field every sweep removes 40-60 % of the error
    sweeps = 64 if method.startswith("dpm") else 1
    z = invert(field, x, y, cfg, 1, iters=8, sweeps=sweeps)
    assert torch.allclose(sample(field, z, y, cfg, 1), x, atol=1e-5)
    assert torch.allclose(z, z0, atol=1e-4)  # the map is one-to-one here: the noise itself comes back


def test_inversion_with_guidance_and_an_interval_reconstructs_too():
    field = gaussian_field(0.05, y_scale=0.4)
    y = torch.tensor([0, 1, 2])
    cfg = SamplerConfig(method="dpm++2m", steps=10, cfg=2.5, interval=(0.1, 0.9))
    x = sample(field, torch.randn(3, 3, 4, 4, dtype=torch.float64), y, cfg, 3)
    z = invert(field, x, y, cfg, 3, iters=8, sweeps=32)
    assert torch.allclose(sample(field, z, y, cfg, 3), x, atol=1e-5)


def test_the_first_iterate_is_ddim_inversion():
    # one iteration of the last Euler step: z_{K−1} = x − (1 − t_{K−1})·v(x, t_{K−1}) (the model evaluated at the
    # clean image with the noisier time)
    field = gaussian_field(1e-9)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    cfg = SamplerConfig(method="euler", steps=1)
    z = invert(field, x, y, cfg, 1, iters=1, t_eps=1e-9)
    assert torch.allclose(z, x - 1.0 * field(x, torch.zeros(2, dtype=torch.float64), y), atol=1e-12)


def test_directions_the_flow_discards_do_not_drift():
    # x̂ = const: the image does not depend on the noise at all, so the exact inverse does not exist and the
    # plain fixed-point iteration would drift by (x − c) per iteration; each image stops at its best iterate
    c = torch.zeros(1, 3, 4, 4, dtype=torch.float64)

    def field(z, t, y):
        return (c - z) / torch.clamp(1 - _t(t, z), min=0.05)

    x = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    cfg = SamplerConfig(method="euler", steps=4)
    z = invert(field, x, torch.zeros(1, dtype=torch.long), cfg, 1, iters=50)
    assert z.abs().max() < 5.0  # the unguarded iteration reaches 50 × 0.5 = 25 in the last step alone


def test_inversion_evaluations_are_counted_calls():
    calls = []
    field = gaussian_field(0.05)

    def counted(z, t, y):
        calls.append(1)
        return field(z, t, y)

    for method in ("euler", "heun", "dpm++2m"):
        calls.clear()
        cfg = SamplerConfig(method=method, steps=5)
        # no early stop on this field within 3 iterations: the count is the budget
        invert(
            counted,
            torch.randn(2, 3, 4, 4, dtype=torch.float64),
            torch.zeros(2, dtype=torch.long),
            cfg,
            1,
            iters=3,
        )
        assert len(calls) == inversion_evaluations(cfg, 3)
    assert default_sweeps("heun") == 1 and default_sweeps("dpm++2m") == 2


def test_bad_arguments_name_the_parameter():
    field = gaussian_field(0.05)
    x, y = torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="iters must be >= 1, found 0"):
        invert(field, x, y, SamplerConfig(), 1, iters=0)
    with pytest.raises(ValueError, match="sweeps must be >= 1, found 0"):
        invert(field, x, y, SamplerConfig(), 1, sweeps=0)
    with pytest.raises(
        ValueError, match="dpm\\+\\+2m-pc cannot be inverted step by step.*invert with dpm\\+\\+2m"
    ):
        invert(field, x, y, SamplerConfig(method="dpm++2m-pc"), 1)
