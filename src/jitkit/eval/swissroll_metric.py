"""The ``swissroll`` metric: samples in D dimensions judged against the 2-D swiss roll they should lie on.

The data are x = P·u with u a 2-D swiss-roll point and P [D, 2] column-orthonormal. For samples s [n, D]:

- projection back:       u' = Pᵀ s  (coordinates in the data's plane), residual r = s − P u'
- ``off_manifold_energy``: mean over samples of ‖r‖²  (0 for a perfect model; the energy the model left
  outside the 2-D subspace); ``off_manifold_fraction`` = Σ‖r‖² / Σ‖s‖²
- ``mean_nn_dist``:        mean over samples of min_j ‖u' − d_j‖ to held-out data points d_j (2-D)
- ``sliced_wasserstein``:  SW₁ between {u'} and {d_j}: the mean over evenly spaced directions θ_a = π a/A
  of the 1-D Wasserstein-1 distance W₁(θᵀu', θᵀd) = ∫₀¹ |F⁻¹(q) − G⁻¹(q)| dq, evaluated on a common grid
  of quantile levels (exact for equal sample sizes).

Shape key: n samples, m held-out points, D ambient dimension, A directions.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def nearest_distances(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each row of a [n, d], the Euclidean distance to the nearest row of b [m, d] → [n]."""
    out = np.empty(len(a))
    b2 = (b * b).sum(1)  # [m]
    for i in range(0, len(a), chunk):
        x = a[i : i + chunk]
        d2 = (x * x).sum(1)[:, None] + b2[None, :] - 2.0 * x @ b.T  # [c,m]
        out[i : i + chunk] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W₁ between two 1-D empirical distributions = ∫₀¹ |F_a⁻¹(q) − F_b⁻¹(q)| dq on a midpoint grid."""
    a, b = np.sort(a), np.sort(b)
    if len(a) == len(b):
        return float(np.abs(a - b).mean())
    k = max(len(a), len(b))
    q = (np.arange(k) + 0.5) / k
    qa = a[np.minimum((q * len(a)).astype(np.int64), len(a) - 1)]
    qb = b[np.minimum((q * len(b)).astype(np.int64), len(b) - 1)]
    return float(np.abs(qa - qb).mean())


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, n_dirs: int = 128) -> float:
    """SW₁ of two 2-D point sets over ``n_dirs`` evenly spaced directions θ_a = π·a/n_dirs."""
    a, b = _np(a), _np(b)
    if a.shape[1] != 2 or b.shape[1] != 2:
        raise ValueError(f"sliced_wasserstein expects 2-D points [n, 2], found {a.shape} and {b.shape}")
    ang = np.pi * np.arange(n_dirs) / n_dirs
    dirs = np.stack([np.cos(ang), np.sin(ang)], 1)  # [A,2]
    pa, pb = a @ dirs.T, b @ dirs.T  # [n,A], [m,A]
    return float(np.mean([wasserstein_1d(pa[:, i], pb[:, i]) for i in range(n_dirs)]))


def swissroll_metrics(samples_D: Any, P: Any, data2d_heldout: Any, n_dirs: int = 128) -> dict[str, float]:
    """Judge samples [n, D] against held-out 2-D swiss-roll points [m, 2] through the data set's P [D, 2].

    Returns ``mean_nn_dist``, ``off_manifold_energy``, ``off_manifold_fraction``, ``sliced_wasserstein``, ``n``.
    """
    s, P, d = _np(samples_D), _np(P), _np(data2d_heldout)
    if s.ndim != 2 or P.ndim != 2 or P.shape[1] != 2 or s.shape[1] != P.shape[0]:
        raise ValueError(
            f"swissroll metric expects samples [n, D] and P [D, 2] with the same D, found samples "
            f"{list(s.shape)} and P {list(P.shape)}"
        )
    if d.ndim != 2 or d.shape[1] != 2 or len(d) == 0:
        raise ValueError(f"swissroll metric expects held-out data points [m, 2], found {list(d.shape)}")
    if not np.isfinite(s).all():
        raise ValueError("swissroll metric: the samples contain NaN or infinite values")
    u = s @ P  # [n,2] coordinates in the plane
    r = s - u @ P.T  # [n,D] residual off the plane
    energy = (r * r).sum(1)
    total = (s * s).sum()
    return {
        "mean_nn_dist": float(nearest_distances(u, d).mean()),
        "off_manifold_energy": float(energy.mean()),
        "off_manifold_fraction": float(energy.sum() / total) if total > 0 else 0.0,
        "sliced_wasserstein": sliced_wasserstein(u, d, n_dirs),
        "n": int(len(s)),
    }
