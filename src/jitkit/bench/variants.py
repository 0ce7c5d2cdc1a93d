"""Slower ways of doing what the library does, kept on purpose as the "before" of measured comparisons.

``jitkit bench --compare`` times the library's implementation against these (the before → after table of
``benchmarks/README.md``). Nothing in training, sampling or the experiments uses them; each computes the same
result as the library code it stands beside (``tests/test_bench_runner.py`` checks the sampler):

* :class:`LoopEMA`: the reference release's EMA, a per-tensor ``mul_`` + ``add_`` for each of two decays
  (``ema=loop``; the library's is :class:`jitkit.train.ema.EMA`).
* :class:`LerpEMA`: one ``torch._foreach_lerp_`` per decay over every parameter, without the library EMA's
  handling of frozen parameters and warm-up (``ema=lerp``).
* :func:`sample_separate_cfg`: Heun where every guided velocity is two separate network passes (conditional,
  then unconditional), also where the guidance scale is 1: the reference's unbatched CFG (``cfg_mode=separate``;
  the library's is :func:`jitkit.diffusion.generate.sample_denoiser`).
* :func:`lambda_multistep_update`: DPM-Solver++(2M) in its published form, a polynomial in the log-SNR λ (the
  library's solver interpolates in t: :func:`jitkit.diffusion.solvers.multistep_update`; compared in
  ``benchmarks/solvers.py``).

Shape key: B batch, C channels, S side; z [B, C, S, S]; y [B].
"""

from __future__ import annotations

import math

import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.generate import denoiser_velocity
from jitkit.diffusion.sampling import guidance_scale
from jitkit.diffusion.solvers import clamp_weight, solver_time

__all__ = ["LerpEMA", "LoopEMA", "sample_separate_cfg"]


class LoopEMA:
    """The reference's EMA: per tensor, ema ← d·ema + (1 − d)·p, for each decay."""

    def __init__(self, model: torch.nn.Module, decays: tuple[float, ...] = (0.9999, 0.9996)) -> None:
        self.decays = decays
        self.shadows = [[p.detach().clone() for p in model.parameters()] for _ in decays]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = list(model.parameters())
        for d, shadow in zip(self.decays, self.shadows):
            for e, p in zip(shadow, params):
                e.mul_(d).add_(p, alpha=1 - d)


class LerpEMA(LoopEMA):
    """ema ← ema + (1 − d)·(p − ema) with one ``torch._foreach_lerp_`` per decay (no temporaries)."""

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        for d, shadow in zip(self.decays, self.shadows):
            torch._foreach_lerp_(shadow, params, 1 - d)


@torch.no_grad()
def sample_separate_cfg(
    denoiser: torch.nn.Module,
    z0: torch.Tensor,
    y: torch.Tensor,
    sampler_cfg: SamplerConfig,
    *,
    precision: str = "fp32",
) -> torch.Tensor:
    """Heun from ``z0`` [B, C, S, S] with two separate passes per guided velocity (the reference's CFG).

    Only ``method="heun"`` is implemented (what ``jitkit bench`` samples with); the null class comes from the
    Denoiser. Computes what :func:`jitkit.diffusion.generate.sample_denoiser` does, up to float rounding.
    """
    if sampler_cfg.method != "heun":
        raise ValueError(
            f"sample_separate_cfg implements the heun sampler only, found {sampler_cfg.method!r}"
        )
    velocity = denoiser_velocity(denoiser, precision)
    B = z0.shape[0]
    ts = torch.linspace(0.0, 1.0, sampler_cfg.steps + 1).tolist()
    y_null = torch.full_like(y, denoiser.null_class)

    def guided(z: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((B,), t, device=z.device, dtype=z.dtype)
        v_c, v_u = velocity(z, tt, y), velocity(z, tt, y_null)
        return v_u + guidance_scale(t, sampler_cfg.cfg, sampler_cfg.interval) * (v_c - v_u)

    z = z0
    for k in range(sampler_cfg.steps):
        dt = ts[k + 1] - ts[k]
        v1 = guided(z, ts[k])
        if k < sampler_cfg.steps - 1:
            z = z + dt * 0.5 * (v1 + guided(z + dt * v1, ts[k + 1]))
        else:  # the last step is Euler, as in the library sampler
            z = z + dt * v1
    return z


def lambda_multistep_update(
    z: torch.Tensor, preds: list, times: list, t_next: float, t_eps: float, order: int
):
    """One step of DPM-Solver++ in its published λ form (:mod:`jitkit.diffusion.solvers` derives it), order 1 or
    2; the arguments are those of :func:`jitkit.diffusion.solvers.multistep_update`.

    The "before" of the t form the library uses (measured in benchmarks/solvers.py: 1.3× the RMS error at
    10 network evaluations). A node at t = 0 (λ = −inf) gives no
    derivative, so the second step is first order too.
    """
    taus = [solver_time(t, t_eps) for t in times[: min(order, len(preds), 2)]]
    w_s, w_t = clamp_weight(times[0], t_eps), clamp_weight(t_next, t_eps)
    h = solver_time(t_next, t_eps) - taus[0]
    alpha = 1.0 - 1.0 / w_t  # α_t below the clamp
    c0 = -math.expm1(-h)  # 1 − e^{−h}; 1 when λ_s = −inf
    z_next = (w_s / w_t) * z + (alpha * c0) * preds[0]
    if len(taus) == 2 and math.isfinite(taus[0]) and math.isfinite(taus[1]):
        z_next = z_next + (alpha * (h - c0) / (taus[0] - taus[1])) * (preds[0] - preds[1])
    return z_next
