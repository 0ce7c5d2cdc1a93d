"""Fréchet distance, Inception Score and precision/recall against closed forms and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from jitkit.eval.fid import (
    feature_stats,
    frechet_distance,
    inception_score,
    load_stats,
    precision_recall,
    save_stats,
    trace_sqrt_product,
)


def _random_orthogonal(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_commuting_covariances_closed_form(method):
    # Σ₁ = Q D₁ Qᵀ, Σ₂ = Q D₂ Qᵀ commute: tr √(Σ₁Σ₂) = Σ √(d₁ᵢ d₂ᵢ), so
    # d² = ‖μ₁−μ₂‖² + Σ (√d₁ᵢ − √d₂ᵢ)²
    if method == "sqrtm":
        pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    n = 64
    q = _random_orthogonal(n, rng)
    d1, d2 = rng.uniform(0.1, 3, n), rng.uniform(0.1, 3, n)
    d1[:5] = 0.0  # singular covariances are allowed
    s1, s2 = (q * d1) @ q.T, (q * d2) @ q.T
    mu1, mu2 = rng.standard_normal(n), rng.standard_normal(n)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-7, abs=1e-7)


def test_non_commuting_2x2_closed_form():
    # for 2×2 PSD: tr √A = √(tr A + 2 √det A) (eigenvalues λ₁, λ₂ ≥ 0 of A = Σ₁Σ₂)
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
        s1, s2 = a @ a.T, b @ b.T
        expected_tr = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
        assert trace_sqrt_product(s1, s2) == pytest.approx(expected_tr, rel=1e-9)
        mu1, mu2 = rng.standard_normal(2), rng.standard_normal(2)
        expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * expected_tr
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_methods_agree_on_random_gaussians_and_identity_is_zero():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32))
    y = rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32)) + 0.3
    m1, s1 = feature_stats(x)
    m2, s2 = feature_stats(y)
    a = frechet_distance(m1, s1, m2, s2, method="eigh")
    b = frechet_distance(m1, s1, m2, s2, method="sqrtm")
    assert a == pytest.approx(b, rel=1e-6)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-8)
    # symmetric in its arguments
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(a, rel=1e-9)


def test_feature_stats_and_npz_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    f = rng.standard_normal((50, 4)).astype(np.float32)
    mu, sigma = feature_stats(f)
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64).T), rtol=1e-12)
    p = save_stats(tmp_path / "s.npz", mu, sigma, features=f)
    z = load_stats(p)
    assert set(z) >= {"mu", "sigma", "features"}
    np.testing.assert_array_equal(z["mu"], mu)
    np.testing.assert_array_equal(z["sigma"], sigma)
    np.savez(tmp_path / "bad.npz", m=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="jitkit ref-stats"):
        load_stats(tmp_path / "missing.npz")


def test_dimension_mismatch_is_explained():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_score_closed_forms():
    K = 10
    # uniform predictions: p(y|x) = p(y) → IS = 1
    assert inception_score(np.zeros((100, K)))[0] == pytest.approx(1.0)
    # confident predictions spread evenly over K classes in every split → IS = K
    logits = np.full((100, K), -1e4)
    logits[np.arange(100), np.arange(100) % K] = 0.0
    mean, std = inception_score(logits, splits=10, shuffle_seed=None)
    assert mean == pytest.approx(K, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    # confident but all the same class → IS = 1
    logits2 = np.full((100, K), -1e4)
    logits2[:, 3] = 0.0
    assert inception_score(logits2)[0] == pytest.approx(1.0)
    # the shuffle only reorders rows: a split-free score (splits=1) does not depend on it
    rng = np.random.default_rng(0)
    lg = rng.standard_normal((50, K)) * 3
    assert inception_score(lg, 1)[0] == pytest.approx(inception_score(lg, 1, shuffle_seed=None)[0])
    # against a direct formula for one split
    p = np.exp(lg) / np.exp(lg).sum(1, keepdims=True)
    direct = np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean())
    assert inception_score(lg, 1)[0] == pytest.approx(direct, rel=1e-10)


def _brute_pr(real, fake, k):
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, 1)[:, k]

    def cover(p, c, r):
        d = np.sqrt(((p[:, None] - c[None]) ** 2).sum(-1))
        return float((d <= r[None]).any(1).mean())

    return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def test_precision_recall_synthetic():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((300, 8))
    # a set against itself: every point lies in its own ball
    pr = precision_recall(real, real, k=3)
    assert pr == {"precision": 1.0, "recall": 1.0}
    # far away: nothing overlaps
    pr = precision_recall(real, real + 100.0, k=3)
    assert pr == {"precision": 0.0, "recall": 0.0}
    # mode collapse: fakes near one real point → high precision, low recall
    fake = real[0] + 0.01 * rng.standard_normal((200, 8))
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.05
    # same distribution, different draws: both high-ish and equal to the brute-force computation
    other = rng.standard_normal((250, 8))
    pr = precision_recall(real, other, k=3, chunk=64)
    bp, br = _brute_pr(real, other, 3)
    assert pr["precision"] == pytest.approx(bp) and pr["recall"] == pytest.approx(br)
    assert pr["precision"] > 0.5 and pr["recall"] > 0.5
