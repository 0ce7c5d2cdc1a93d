"""Time grids t_0 = 0 < t_1 < … < t_K = 1 for the samplers, selected by name (``SamplerConfig.time_grid``).

Every grid starts at pure noise (t = 0) and ends at the data (t = 1); they differ in where the K − 1
interior points go. In terms of the log-SNR λ = log(t/(1−t)) of the path z_t = t·x + (1−t)·e:

* ``uniform`` — t_k = k/K, the reference's grid (``torch.linspace``, so that Euler and Heun stay
  bit-identical to the reference). In λ its steps are widest at both ends: for K = 10 the interior points
  sit at λ = ±2.20, ±1.39, ±0.85, ±0.41, 0.
* ``logsnr`` — the interior points equally spaced in λ between the uniform grid's first and last interior
  points (λ_1 = −log(K−1), λ_{K−1} = log(K−1)): the natural grid of exponential integrators, whose local
  error grows with the λ step. Compared with ``uniform`` it moves points from the middle to both ends.
* ``edm`` — the grid of Karras et al. (EDM, 2022): the noise level s = (1−t)/t (the EDM σ of this path)
  spaced as s_k = (s_max^{1/ρ} + (k−1)/(K−2)·(s_min^{1/ρ} − s_max^{1/ρ}))^ρ for the interior points,
  with ρ = 7, s_max = 80, s_min = 0.002. It crowds the points near the data end.

Grids are Python floats (no device syncs in a sampler's loop) and strictly increasing.
"""

from __future__ import annotations

import math

import torch

from jitkit.config import GRIDS

__all__ = ["EDM_RHO", "EDM_S_MAX", "EDM_S_MIN", "GRIDS", "log_snr", "time_grid"]

EDM_RHO, EDM_S_MAX, EDM_S_MIN = 7.0, 80.0, 0.002


def log_snr(t: float) -> float:
    """λ = log(t/(1−t)) of the path z_t = t·x + (1−t)·e (−inf at t = 0, +inf at t = 1)."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def _sigmoid(lam: float) -> float:
    return 1.0 / (1.0 + math.exp(-lam)) if lam >= 0 else math.exp(lam) / (1.0 + math.exp(lam))


def time_grid(kind: str, steps: int) -> list[float]:
    """The K + 1 = ``steps`` + 1 times of grid ``kind`` (one of ``GRIDS``), from 0 to 1 inclusive."""
    if kind not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, found {kind!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, found {steps}")
    if kind == "uniform" or steps <= 2:  # with one interior point (or none) every grid is the uniform one
        return torch.linspace(0.0, 1.0, steps + 1).tolist()
    if kind == "logsnr":
        lam_hi = math.log(steps - 1)  # λ(1 − 1/K) = log(K − 1); λ(1/K) = −log(K − 1)
        inner = [-lam_hi + 2.0 * lam_hi * (k - 1) / (steps - 2) for k in range(1, steps)]
        ts = [_sigmoid(lam) for lam in inner]
    else:  # edm
        a, b = EDM_S_MAX ** (1 / EDM_RHO), EDM_S_MIN ** (1 / EDM_RHO)
        sig = [(a + (k - 1) / (steps - 2) * (b - a)) ** EDM_RHO for k in range(1, steps)]
        ts = [1.0 / (1.0 + s) for s in sig]  # s = (1 − t)/t
    grid = [0.0, *ts, 1.0]
    if any(b <= a for a, b in zip(grid, grid[1:])):  # pragma: no cover - guarded by the formulas above
        raise AssertionError(f"time grid {kind} with {steps} steps is not increasing: {grid}")
    return grid
