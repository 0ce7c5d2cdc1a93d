from __future__ import annotations

import numpy as np
import pytest

from jitkit.config import DataConfig
from jitkit.data import build_dataset
from jitkit.data.swissroll import SwissRoll, orthonormal_projection, swiss_roll_2d


@pytest.mark.parametrize("D", [2, 3, 16, 512])
def test_projection_is_column_orthonormal(D):
    P = orthonormal_projection(D, seed=4)
    assert P.shape == (D, 2)
    np.testing.assert_allclose(P.T @ P, np.eye(2), atol=1e-12)
    np.testing.assert_array_equal(P, orthonormal_projection(D, seed=4))
    assert not np.allclose(P, orthonormal_projection(D, seed=5))


def test_roll_geometry_without_noise():
    p = swiss_roll_2d(2000, noise=0.0, seed=0)
    assert p.shape == (2000, 2)
    r = np.linalg.norm(p, axis=1)
    # x = t cos t, z = t sin t with t in [1.5π, 4.5π], scaled by 1/10: radius = t/10, angle = t (mod 2π)
    assert r.min() >= 1.5 * np.pi / 10 - 1e-9 and r.max() <= 4.5 * np.pi / 10 + 1e-9
    t = r * 10
    np.testing.assert_allclose(p[:, 0], t * np.cos(t) / 10, atol=1e-9)
    np.testing.assert_allclose(p[:, 1], t * np.sin(t) / 10, atol=1e-9)


def test_noise_scale():
    clean = swiss_roll_2d(5000, noise=0.0, seed=1)
    noisy = swiss_roll_2d(5000, noise=0.5, seed=1)
    # same t draws, noise added before the 1/10 scale: per-coordinate std 0.05
    assert abs((noisy - clean).std() - 0.05) < 0.005


def test_swissroll_dataset_lies_in_the_plane():
    ds = SwissRoll(D=32, n=500, noise=0.5, seed=2)
    assert ds.data.shape == (500, 32) and ds.P.shape == (32, 2)
    np.testing.assert_allclose(ds.data, ds.points2d @ ds.P.T)
    np.testing.assert_allclose(ds.data @ ds.P, ds.points2d, atol=1e-12)
    off = ds.data - ds.data @ ds.P @ ds.P.T
    assert np.abs(off).max() < 1e-12
    x, y = ds[3]
    assert tuple(x.shape) == (32,) and y == 0


def test_build_dataset_swissroll_held_out():
    tr = build_dataset(DataConfig(data="swissroll-8", per_class=100, seed=0))
    va = build_dataset(DataConfig(data="swissroll-8", per_class=100, seed=0), split="val")
    np.testing.assert_array_equal(tr.P, va.P)
    assert not np.allclose(tr.points2d, va.points2d)
    with pytest.raises(ValueError, match="swissroll-D"):
        build_dataset(DataConfig(data="swissroll-x"))
