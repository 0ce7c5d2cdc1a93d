"""The swissroll metric against closed forms: shifts, off-plane noise, identical sets."""

from __future__ import annotations

import numpy as np
import pytest

from jitkit.data.swissroll import orthonormal_projection, swiss_roll_2d
from jitkit.eval.swissroll_metric import (
    nearest_distances,
    sliced_wasserstein,
    swissroll_metrics,
    wasserstein_1d,
)


def test_perfect_samples_score_zero():
    P = orthonormal_projection(8, seed=0)
    d = swiss_roll_2d(500, seed=1)
    m = swissroll_metrics(d @ P.T, P, d)
    assert m["mean_nn_dist"] == pytest.approx(0.0, abs=1e-6)
    assert m["off_manifold_energy"] == pytest.approx(0.0, abs=1e-20)
    assert m["sliced_wasserstein"] == pytest.approx(0.0, abs=1e-12)
    assert m["n"] == 500


def test_off_plane_energy_equals_added_orthogonal_noise():
    D = 10
    P = orthonormal_projection(D, seed=0)
    d = swiss_roll_2d(400, seed=2)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((400, D))
    noise -= noise @ P @ P.T  # strictly orthogonal to the plane
    s = d @ P.T + noise
    m = swissroll_metrics(s, P, d)
    assert m["off_manifold_energy"] == pytest.approx((noise**2).sum(1).mean(), rel=1e-10)
    # the projection back is unchanged: still on the data
    assert m["mean_nn_dist"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < m["off_manifold_fraction"] < 1


def test_sliced_wasserstein_of_a_shift():
    # W1 along θ of a set and its shift by c is |c·θ|; averaged over θ uniform on [0, π): (2/π)|c|
    a = np.random.default_rng(0).standard_normal((300, 2))
    c = np.array([0.3, -0.4])
    sw = sliced_wasserstein(a, a + c, n_dirs=512)
    assert sw == pytest.approx(2 / np.pi * np.linalg.norm(c), rel=1e-3)


def test_wasserstein_1d_unequal_sizes():
    # two uniform grids on [0, 1] and [1, 2] of different sizes: W1 = 1
    a = (np.arange(100) + 0.5) / 100
    b = 1 + (np.arange(300) + 0.5) / 300
    assert wasserstein_1d(a, b) == pytest.approx(1.0, abs=1e-2)


def test_nearest_distances_against_brute_force():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((50, 2)), rng.standard_normal((70, 2))
    brute = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(a, b, chunk=7), brute, atol=1e-9)


def test_bad_shapes_are_explained():
    P = orthonormal_projection(4, seed=0)
    with pytest.raises(ValueError, match="same D"):
        swissroll_metrics(np.zeros((3, 5)), P, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[m, 2\]"):
        swissroll_metrics(np.zeros((3, 4)), P, np.zeros((3, 3)))
