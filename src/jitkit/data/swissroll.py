"""``swissroll-D``: the manifold toy of the JiT paper (Figure 2) — a 2-D swiss roll embedded in D dimensions.

2-D points: the x and z coordinates of the classic 3-D swiss roll, with Gaussian noise, scaled by 1/10:

    u ~ U(0, 1),   t = 1.5π (1 + 2u),
    x = t cos t + noise·n₁,   z = t sin t + noise·n₂,   n ~ N(0, 1),
    p = (x, z) / 10.

Embedding: a fixed random column-orthonormal P ∈ R^{D×2} (PᵀP = I₂) from a seed; data = p Pᵀ ∈ R^{n×D}.
Projecting samples back: p̂ = x̂ P; the energy off the plane is ‖x̂ − x̂ P Pᵀ‖².

Shape key: n points, D ambient dimensions; points2d [n, 2], P [D, 2], data [n, D].
"""

from __future__ import annotations

import numpy as np
import torch


def swiss_roll_2d(n: int, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """n points (float64 [n, 2]) of the 2-D swiss roll: (x, z) of the 3-D roll plus noise, scaled by 1/10."""
    if n < 1:
        raise ValueError(f"n must be >= 1, found {n}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, found {noise}")
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)  # [n, 2]
    pts = pts + noise * rng.standard_normal((n, 2))
    return pts / 10.0


def orthonormal_projection(D: int, seed: int = 0) -> np.ndarray:
    """A random column-orthonormal matrix P (float64 [D, 2], PᵀP = I) from a seed (QR of a Gaussian matrix,
    signs fixed so that diag(R) > 0, which makes P unique for the seed)."""
    if D < 2:
        raise ValueError(f"ambient dimension D must be >= 2, found {D}")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((D, 2))
    q, r = np.linalg.qr(g)  # q [D, 2]
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs[None, :]


def parse_swissroll_name(name: str) -> int | None:
    """``swissroll-D`` → D (``swissroll`` alone → 2); anything else → None."""
    low = name.strip().lower()
    if low == "swissroll":
        return 2
    if low.startswith("swissroll-"):
        tail = low.split("-", 1)[1]
        if not tail.isdigit() or int(tail) < 2:
            raise ValueError(
                f"expected 'swissroll-D' with an integer D >= 2 (e.g. swissroll-16), found {name!r}"
            )
        return int(tail)
    return None


class SwissRoll(torch.utils.data.Dataset):
    """The swiss roll embedded in D dimensions.

    Attributes: ``P`` (float64 [D, 2]), ``points2d`` (float64 [n, 2]), ``data`` (float64 [n, D] =
    points2d @ P.T). Items are (float32 tensor [D], 0) so it can be fed like a one-class data set.
    The projection P depends on ``seed`` only; the points use ``seed`` and are different for ``point_seed``
    when given (e.g. held-out points under the same P).
    """

    def __init__(
        self, D: int, n: int = 10000, noise: float = 0.5, seed: int = 0, point_seed: int | None = None
    ) -> None:
        self.D = int(D)
        self.noise = float(noise)
        self.seed = int(seed)
        self.P = orthonormal_projection(self.D, seed)
        self.points2d = swiss_roll_2d(n, noise, seed if point_seed is None else point_seed)
        self.data = self.points2d @ self.P.T
        self.classes = ["swissroll"]
        self._tensor = torch.from_numpy(self.data.astype(np.float32))

    @property
    def tensor(self) -> torch.Tensor:
        """The data as a float32 tensor [n, D]."""
        return self._tensor

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._tensor[i], 0
