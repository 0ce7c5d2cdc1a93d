"""The multistep solvers (DPM-Solver++(2M)/(3M) in t), the time grids, and every solver on closed-form flows:
exactness, measured order, CFG batching and interval, network-evaluation counts, too few steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jitkit.config import GRIDS, SAMPLERS, ConfigError, SamplerConfig
from jitkit.diffusion.grids import time_grid
from jitkit.diffusion.sampling import Trajectory, network_evaluations, sample, sampling_cost
from jitkit.diffusion.solvers import (
    clamp_weight,
    lagrange_weights,
    multistep_update,
    order_note,
    t_moments,
)

Y1 = torch.zeros(1, dtype=torch.long)


class Counter:
    """A velocity field that counts its calls and records (batch, t, labels) of each."""

    def __init__(self, fn):
        self.fn, self.calls, self.batches = fn, 0, []

    def __call__(self, z, t, y):
        self.calls += 1
        self.batches.append((z.shape[0], float(t[0]), y.clone()))
        return self.fn(z, t, y)


def _t(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (z.dim() - 1))).to(z.dtype)


def constant_x_field(c: torch.Tensor, t_eps: float):
    """x̂ = c everywhere: v = (c − z)/max(1 − t, t_eps), a field linear in z; z_t = c + (z_0 − c)/w(t) exactly."""

    def v(z, t, y):
        return (c - z) / torch.clamp(1 - _t(t, z), min=t_eps)

    return v


MU, S = 0.3, 0.5


def gaussian_field(t_eps: float):
    """The exact flow of data x ~ N(MU, S²) per pixel: x̂ = E[x | z_t] and z_1 = MU + S·z_0 (closed form)."""

    def v(z, t, y):
        tt = _t(t, z)
        x = MU + tt * S * S / (tt * tt * S * S + (1 - tt) ** 2) * (z - tt * MU)
        return (x - z) / torch.clamp(1 - tt, min=t_eps)

    return v


# -- grids -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 50])
def test_time_grids_run_from_noise_to_data_increasing(kind, steps):
    g = time_grid(kind, steps)
    assert len(g) == steps + 1 and g[0] == 0.0 and g[-1] == 1.0
    assert all(b > a for a, b in zip(g, g[1:]))


def test_uniform_grid_is_the_references_linspace_bit_for_bit():
    assert time_grid("uniform", 37) == torch.linspace(0.0, 1.0, 38).tolist()


def test_logsnr_grid_is_uniform_in_log_snr_between_the_uniform_grids_ends():
    g = time_grid("logsnr", 10)
    lam = [math.log(t / (1 - t)) for t in g[1:-1]]
    assert np.allclose(np.diff(lam), np.diff(lam)[0])
    assert math.isclose(g[1], 0.1) and math.isclose(g[-2], 0.9)


def test_unknown_grid_lists_the_valid_ones():
    with pytest.raises(ValueError, match="uniform, logsnr, edm"):
        time_grid("cosine", 4)


# -- the exact weights --------------------------------------------------------------------------------------


def _quadrature(nodes, s, t, t_eps, j):
    """(1/w_t) ∫_s^t ℓ_j(u) dw(u) by Gauss–Legendre in w, split at the clamp edge (independent of t_moments)."""
    x, g = np.polynomial.legendre.leggauss(200)
    edge = 1.0 / t_eps
    ws, wt = clamp_weight(s, t_eps), clamp_weight(t, t_eps)
    total = 0.0
    for lo, hi in ((ws, min(wt, edge)), (max(ws, edge), wt)):
        if hi <= lo:
            continue
        w = (hi - lo) / 2 * x + (hi + lo) / 2
        u = np.where(w <= edge, 1 - 1 / w, 1 - t_eps + t_eps * np.log(w * t_eps))
        ell = np.ones_like(u)
        for m, um in enumerate(nodes):
            if m != j:
                ell *= (u - um) / (nodes[j] - um)
        total += (hi - lo) / 2 * np.sum(g * ell)
    return total / wt


@pytest.mark.parametrize(
    "nodes,s,t",
    [
        ([0.0], 0.0, 0.1),
        ([0.3, 0.2], 0.3, 0.4),
        ([0.3, 0.2, 0.1], 0.3, 0.4),
        ([0.9, 0.8, 0.7], 0.9, 1.0),  # across the clamp edge 0.95, into t = 1
        ([0.96, 0.94], 0.96, 0.98),  # inside the clamp
        ([0.5, 0.4, 0.6], 0.5, 0.6),  # a node after s (a corrector's)
    ],
)
def test_lagrange_weights_are_the_exact_integrals(nodes, s, t):
    t_eps = 0.05
    a, w = lagrange_weights(nodes, s, t, t_eps)
    assert math.isclose(a, clamp_weight(s, t_eps) / clamp_weight(t, t_eps), rel_tol=1e-12)
    for j in range(len(nodes)):
        assert math.isclose(w[j], _quadrature(nodes, s, t, t_eps, j), rel_tol=1e-9, abs_tol=1e-12)


def test_moments_of_a_tiny_step_do_not_cancel_away():
    # M_1 ~ h²/2·w'/w and M_2 ~ h³/3·w'/w: computed from differences of O(h) terms, still accurate
    a, m = t_moments(0.5, 0.5 + 1e-4, 0.05)
    assert math.isclose(m[0], 1 - a, rel_tol=1e-12)
    assert math.isclose(m[1], 1e-8 / 2 * 2.0, rel_tol=1e-4)  # w'/w = 1/(1−t) = 2
    assert math.isclose(m[2], 1e-12 / 3 * 2.0, rel_tol=1e-3)


# -- closed-form flows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dpm++2m", "dpm++3m", "dpm++2m-pc", "dpm++3m-pc"])
@pytest.mark.parametrize("grid", GRIDS)
def test_multistep_solvers_are_exact_on_a_linear_field_clamp_included(method, grid):
    t_eps = 0.05
    torch.manual_seed(0)
    c, z0 = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    traj = Trajectory()
    cfg = SamplerConfig(method=method, steps=9, time_grid=grid)
    out = sample(
        constant_x_field(c, t_eps), z0, torch.zeros(2, dtype=torch.long), cfg, 1, t_eps=t_eps, trajectory=traj
    )
    for t, z in zip(traj.t, traj.z):
        assert torch.allclose(z, c + (z0 - c) / clamp_weight(t, t_eps), atol=1e-12), t
    assert torch.allclose(out, c + (z0 - c) * t_eps / math.e, atol=1e-12)  # w(1) = e/t_eps


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_euler_and_heun_are_exact_on_a_linear_field_without_the_clamp(method):
    # with t_eps far below every step: z_t = c + (z_0 − c)(1 − t), and the last step lands on c
    c, z0 = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    out = sample(constant_x_field(c, 1e-9), z0, Y1, SamplerConfig(method=method, steps=7), 1, t_eps=1e-9)
    assert torch.allclose(out, c, atol=1e-12)


NOMINAL = {
    "euler": 1,
    "heun": 2,
    "dpm++2m": 2,
    "dpm++3m": 2,
    "dpm++2m-pc": 2,
    "dpm++3m-pc": 2,
}  # global (3M below)


@pytest.mark.parametrize("method", list(NOMINAL))
def test_measured_order_on_the_gaussian_flow(method):
    # error at t = 1 against the closed form z_1 = MU + S·z_0; halving the step divides it by ≈ 2^order.
    # dpm++3m's global order is 2 like 2M's: its first step has only x̂_0 (local error O(h²)); its
    # third-order steps are checked one at a time below.
    t_eps = 1e-9  # no clamp inside the steps: the closed form is the unclamped flow
    z0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + S * z0
    errs = []
    for k in (16, 32, 64):
        out = sample(
            gaussian_field(t_eps),
            z0,
            torch.zeros(64, dtype=torch.long),
            SamplerConfig(method=method, steps=k),
            1,
            t_eps=t_eps,
        )
        errs.append(float((out - exact).pow(2).mean().sqrt()))
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert min(orders) >= NOMINAL[method] - 0.25, (errs, orders)


@pytest.mark.parametrize("method", ["dpm++2m", "dpm++3m"])
def test_the_corrector_lowers_the_error_of_its_predictor_at_no_extra_evaluation(method):
    # on the closed-form Gaussian flow, once the steps resolve it (16, 32 on the logsnr grid: 0.63-0.77×);
    # at 4-8 steps this field's x̂ bends too fast for either and the corrector does not help (docs/sampling.md)
    t_eps = 1e-9
    z0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = MU + S * z0
    for steps in (16, 32):
        errs, calls = {}, {}
        for m in (method, method + "-pc"):
            f = Counter(gaussian_field(t_eps))
            cfg = SamplerConfig(method=m, steps=steps, time_grid="logsnr")
            out = sample(f, z0, torch.zeros(64, dtype=torch.long), cfg, 1, t_eps=t_eps)
            errs[m], calls[m] = float((out - exact).pow(2).mean().sqrt()), f.calls
        assert calls[method] == calls[method + "-pc"] == steps
        assert errs[method + "-pc"] < 0.85 * errs[method], (steps, errs)


def test_the_corrector_redoes_a_step_through_the_prediction_at_its_end():
    # x̂ linear in t along the solution: the 2-node corrector integrates it exactly, whatever the predictor did
    t_eps = 0.05

    def xhat(u: float) -> torch.Tensor:
        return torch.tensor([0.3 - 1.7 * u], dtype=torch.float64)

    s, t = 0.2, 0.45
    zs = torch.tensor([0.9], dtype=torch.float64)
    got = multistep_update(zs, [xhat(t), xhat(s)], [t, s], t, t_eps, 2, start=s)
    x, g = np.polynomial.legendre.leggauss(40)
    u = (t - s) / 2 * x + (s + t) / 2
    integral = (t - s) / 2 * np.sum(g * (0.3 - 1.7 * u) / (1 - u) ** 2)
    exact = (clamp_weight(s, t_eps) * 0.9 + integral) / clamp_weight(t, t_eps)
    assert abs(float(got) - exact) < 1e-12


@pytest.mark.parametrize("order", [1, 2, 3])
def test_local_order_of_a_multistep_step(order):
    # one step from exact history on a smooth x̂(t) (z-independent, so the exact step is a quadrature):
    # the local error is O(h^{p+1}), so halving h divides it by 2^{p+1}
    t_eps = 0.05

    def xhat(u: float) -> float:
        return math.sin(3 * u) + u * u

    errs = []
    for h in (0.04, 0.02, 0.01):
        s = 0.4
        nodes = [s - j * h for j in range(order)]
        got = multistep_update(
            torch.zeros(1, dtype=torch.float64),
            [torch.tensor([xhat(u)], dtype=torch.float64) for u in nodes],
            nodes,
            s + h,
            t_eps,
            order,
        )
        # exact: (1/w_t) ∫ x̂ dw by fine quadrature in t with dw = w'(u) du = du/(1−u)²
        x, g = np.polynomial.legendre.leggauss(60)
        u = h / 2 * x + s + h / 2
        exact = h / 2 * np.sum(g * np.array([xhat(v) for v in u]) / (1 - u) ** 2) / clamp_weight(s + h, t_eps)
        errs.append(abs(float(got) - exact))
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert min(orders) >= order + 1 - 0.2, (errs, orders)


def test_lambda_form_is_first_order_ddim_at_its_first_step_and_agrees_with_the_t_form_to_second_order():
    from jitkit.bench.variants import lambda_multistep_update

    # DDIM = the Euler step in t: z + (t−s)(x̂ − z)/(1−s)
    z, x = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.2], dtype=torch.float64)
    ddim = z + 0.1 * (x - z) / 0.6
    assert torch.allclose(lambda_multistep_update(z, [x], [0.4], 0.5, 0.05, 1), ddim, atol=1e-14)
    assert torch.allclose(multistep_update(z, [x], [0.4], 0.5, 0.05, 1), ddim, atol=1e-14)


# -- guidance, counts, too few steps ------------------------------------------------------------------------


@pytest.mark.parametrize("method", SAMPLERS)
def test_network_evaluations_are_counted_calls(method):
    for steps in (1, 2, 5):
        cfg = SamplerConfig(method=method, steps=steps)
        f = Counter(lambda z, t, y: torch.zeros_like(z))
        sample(f, torch.zeros(3, 3, 4, 4), torch.zeros(3, dtype=torch.long), cfg, 1)
        assert f.calls == network_evaluations(cfg)


@pytest.mark.parametrize("method", ["dpm++2m", "dpm++3m", "dpm++2m-pc"])
def test_guidance_is_one_batched_forward_and_skipped_outside_the_interval(method):
    f = Counter(lambda z, t, y: torch.zeros_like(z))
    cfg = SamplerConfig(method=method, steps=10, cfg=3.0, interval=(0.35, 0.75), time_grid="logsnr")
    sample(f, torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), cfg, 5)
    assert f.calls == 10
    for (n, _, y), t in zip(f.batches, time_grid("logsnr", 10)):  # the grid's own times (float64)
        t32 = torch.tensor(t, dtype=torch.float32)  # compared as the network sees t (the reference's rule)
        inside = bool((t32 > 0.35) & (t32 < 0.75))
        assert n == (4 if inside else 2), t
        assert ((y == 5).sum().item() == 2) == inside


def test_guided_multistep_equals_the_multistep_of_the_guided_prediction():
    # CFG mixes velocities; x̂ = z + c(t)·v is linear in v, so guiding v is guiding x̂ (one batched forward)
    torch.manual_seed(1)
    A = torch.randn(3, 3)

    def field(z, t, y):
        x = torch.tanh(torch.einsum("ij,bjhw->bihw", A, z)) * (1 + y.view(-1, 1, 1, 1).float()) * 0.3
        return (x - z) / torch.clamp(1 - _t(t, z), min=0.05)

    z0 = torch.randn(2, 3, 4, 4)
    y = torch.tensor([0, 1])
    guided = sample(field, z0, y, SamplerConfig(method="dpm++2m", steps=6, cfg=2.0), 2)

    def mixed(z, t, yy):  # the guided velocity written out by hand: v_u + 2 (v_c − v_u)
        vu = field(z, t, torch.full_like(yy, 2))
        return vu + 2.0 * (field(z, t, yy) - vu)

    by_hand = sample(mixed, z0, y, SamplerConfig(method="dpm++2m", steps=6, cfg=1.0), 2)
    assert torch.allclose(guided, by_hand, atol=1e-5)


@pytest.mark.parametrize(
    "method,steps", [("dpm++2m", 1), ("dpm++3m", 1), ("dpm++3m", 2), ("dpm++3m", 3), ("heun", 1)]
)
def test_too_few_steps_for_the_order_are_explained_not_a_crash(method, steps):
    cfg = SamplerConfig(method=method, steps=steps)
    out = sample(constant_x_field(torch.ones(1, 3, 4, 4), 0.05), torch.zeros(1, 3, 4, 4), Y1, cfg, 1)
    assert torch.isfinite(out).all()
    note = order_note(method, steps)
    assert note is not None and f"{steps} step" in note and "or more steps" in note
    assert "note:" in sampling_cost(cfg)
    assert order_note(method, 8) is None and "note" not in sampling_cost(cfg.replace(steps=8))


def test_sampler_config_refuses_unknown_names_and_non_finite_guidance():
    with pytest.raises(ConfigError, match=r"heun, euler, dpm\+\+2m, dpm\+\+3m.*did you mean 'dpm\+\+2m'"):
        SamplerConfig.from_dict({"method": "dpm++2"})
    with pytest.raises(ConfigError, match="time_grid must be one of uniform, logsnr, edm"):
        SamplerConfig().replace(time_grid="karras")
    for bad in ("nan", "inf", float("-inf")):
        with pytest.raises(ConfigError, match="cfg.*finite number"):
            SamplerConfig().replace(cfg=bad)
    with pytest.raises(ConfigError, match="interval.*finite"):
        SamplerConfig().replace(interval=(0.0, float("nan")))
    # values that reach validate() without coercion (a config built in code)
    with pytest.raises(ConfigError, match="cfg must be a finite number >= 0"):
        SamplerConfig(cfg=float("nan")).validate()
    with pytest.raises(ConfigError, match="interval must be two finite numbers"):
        SamplerConfig(interval=(float("-inf"), 1.0)).validate()


def test_multistep_trajectory_records_states_and_predictions():
    traj = Trajectory()
    c = torch.full((1, 3, 4, 4), 0.5)
    out = sample(
        constant_x_field(c, 0.05),
        torch.zeros(1, 3, 4, 4),
        Y1,
        SamplerConfig(method="dpm++2m", steps=5),
        1,
        trajectory=traj,
    )
    t, z, x = traj.stacked()
    assert t.tolist() == pytest.approx(time_grid("uniform", 5))
    assert z.shape == (6, 1, 3, 4, 4) and x.shape == (5, 1, 3, 4, 4)
    assert torch.equal(z[-1], out) and torch.allclose(x, c.expand_as(x), atol=1e-6)  # x̂ recovered from v
