"""Distances between feature distributions: Fréchet distance, Inception Score, precision/recall.

All functions take plain arrays of features (any extractor); computing Inception features from images lives
in ``jitkit.eval.fidelity`` (torch-fidelity, optional). Reference statistics are ``.npz`` files with ``mu``
[F] and ``sigma`` [F, F] (the layout of the JiT release's ``jit_in256_stats.npz``), optionally plus
``features`` [M, F] for precision/recall.

Shape key: N, M samples; F feature dimension; K classes of a classifier.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def _f64(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str = "eigh") -> float:
    """tr √(Σ₁Σ₂) for symmetric PSD Σ₁, Σ₂.

    ``eigh`` (default): Σ₁Σ₂ is similar to the symmetric PSD matrix M = √Σ₁ Σ₂ √Σ₁ (same eigenvalues λᵢ ≥ 0),
    so tr √(Σ₁Σ₂) = Σᵢ √λᵢ(M), computed with symmetric eigen-decompositions only — no complex round-off.
    ``sqrtm``: scipy.linalg.sqrtm of the product (the classic pytorch-fid route), with a small diagonal offset
    when the result is not finite and the real part taken; kept for comparison.
    """
    if method == "eigh":
        r1 = _sqrt_psd(sigma1)
        m = r1 @ sigma2 @ r1
        lam = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(np.clip(lam, 0, None)).sum())
    if method == "sqrtm":
        from jitkit.runtime.extras import require_extra

        linalg = require_extra("scipy.linalg", "eval", "method='sqrtm'", hint="(or pip install scipy)")
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if isinstance(covmean, tuple):  # older scipy with disp=False semantics
            covmean = covmean[0]
        if not np.isfinite(covmean).all():
            off = np.eye(sigma1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((sigma1 + off) @ (sigma2 + off))
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        return float(np.trace(covmean))
    raise ValueError(f"method must be 'eigh' or 'sqrtm', found {method!r}")


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, method: str = "eigh") -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):

        d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂)

    computed in float64 (see ``trace_sqrt_product``). FID is this on Inception pool features.
    """
    mu1, mu2 = _f64(mu1).reshape(-1), _f64(mu2).reshape(-1)
    s1, s2 = np.atleast_2d(_f64(sigma1)), np.atleast_2d(_f64(sigma2))
    F = mu1.shape[0]
    if mu2.shape[0] != F or s1.shape != (F, F) or s2.shape != (F, F):
        raise ValueError(
            f"Fréchet distance needs mu [F] and sigma [F, F] of one dimension F for both sets, found mu1 "
            f"{list(mu1.shape)}, sigma1 {list(s1.shape)}, mu2 {list(mu2.shape)}, sigma2 {list(s2.shape)} "
            "(are both statistics from the same feature extractor?)"
        )
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"Fréchet distance: {name} contains NaN or infinite values")
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2, method))
    return max(d, 0.0)  # d² ≥ 0; only round-off makes it negative


def feature_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """(μ [F], Σ [F, F]) of features [N, F] in float64; Σ is the unbiased covariance (as np.cov)."""
    f = _f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"statistics need features [N >= 2, F], found shape {list(f.shape)}")
    return f.mean(0), np.cov(f, rowvar=False)


def save_stats(path: str | Path, mu: Any, sigma: Any, features: Any | None = None, **extra: Any) -> Path:
    """Write ``mu``, ``sigma`` (and optionally ``features`` and scalar metadata) to an npz, atomically."""
    from jitkit.fileio import atomic_write_bytes

    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"reference statistics are written to a .npz file, found {str(path)!r}")
    arrays: dict[str, Any] = {"mu": _f64(mu), "sigma": _f64(sigma)}
    if features is not None:
        arrays["features"] = np.asarray(features, dtype=np.float32)
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_stats(path: str | Path) -> dict[str, np.ndarray]:
    """``mu``, ``sigma`` (and ``features`` when present) from a statistics npz (jitkit or JiT release)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"reference statistics not found: {path} (make them with: jitkit ref-stats DATA --out {path.name})"
        )
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z.files or "sigma" not in z.files:
            raise ValueError(
                f"{path}: expected reference statistics with arrays 'mu' and 'sigma' (as jit_in256_stats.npz), "
                f"found {z.files}"
            )
        out = {k: z[k] for k in z.files}
    return out


def inception_score(logits: Any, splits: int = 10, shuffle_seed: int | None = 2020) -> tuple[float, float]:
    """Inception Score from classifier logits [N, K]: IS = exp(E_x KL(p(y|x) ‖ p(y))), mean and std over
    ``splits`` chunks [i·N/splits, (i+1)·N/splits).

    As torch-fidelity (whose numbers the JiT paper reports), the rows are first permuted with
    ``numpy.random.RandomState(shuffle_seed)`` (2020 there); ``shuffle_seed=None`` keeps the order.
    """
    lg = _f64(logits)
    if lg.ndim != 2 or lg.shape[0] < splits:
        raise ValueError(f"Inception Score needs logits [N >= splits={splits}, K], found {list(lg.shape)}")
    N = lg.shape[0]
    if shuffle_seed is not None:
        lg = lg[np.random.RandomState(shuffle_seed).permutation(N)]
    lg = lg - lg.max(1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))  # log p(y|x)
    p = np.exp(logp)
    scores = []
    for i in range(splits):
        a, b = i * N // splits, (i + 1) * N // splits
        py = p[a:b].mean(0)  # p(y) within the split
        kl = (p[a:b] * (logp[a:b] - np.log(np.clip(py, 1e-300, None)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _knn_radii(x, k: int, chunk: int):
    """Distance of each row of x to its k-th nearest other row (torch, float64)."""
    import torch

    n = x.shape[0]
    radii = torch.empty(n, dtype=torch.float64)
    for i in range(0, n, chunk):
        d = torch.cdist(x[i : i + chunk], x)  # [c, n]; the zero self-distance is the 1st smallest
        radii[i : i + chunk] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _coverage(points, centres, radii, chunk: int):
    """Fraction of ``points`` inside at least one ball (centre, radius)."""
    import torch

    inside = torch.zeros(points.shape[0], dtype=torch.bool)
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # [c, m]
        inside[i : i + chunk] = (d <= radii[None, :]).any(dim=1)
    return float(inside.double().mean())


def precision_recall(real: Any, fake: Any, k: int = 3, chunk: int = 256) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) on features real [N, F] and fake [M, F].

    Each set's manifold is the union of balls around its points with radius the distance to the point's
    k-th nearest neighbour in the same set. precision = fraction of fake points inside the real manifold;
    recall = fraction of real points inside the fake manifold.
    """
    import torch

    r = torch.as_tensor(_f64(real))
    f = torch.as_tensor(_f64(fake))
    if r.dim() != 2 or f.dim() != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(
            f"precision/recall need features [N, F] and [M, F] of one dimension, found {list(r.shape)} "
            f"and {list(f.shape)}"
        )
    if min(r.shape[0], f.shape[0]) <= k:
        raise ValueError(
            f"precision/recall with k={k} need more than {k} samples per set, found {r.shape[0]}, {f.shape[0]}"
        )
    real_r = _knn_radii(r, k, chunk)
    fake_r = _knn_radii(f, k, chunk)
    return {"precision": _coverage(f, r, real_r, chunk), "recall": _coverage(r, f, fake_r, chunk)}
