"""Generation without I/O: per-image seeds, balanced labels, rank shares, the sampler driven by a Denoiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion import generate as G

CLASSES = ["a", "b", "c"]
SCFG = SamplerConfig(method="heun", steps=3, cfg=2.0, interval=(0.0, 1.0))


@pytest.fixture(scope="module")
def denoiser(tiny):
    return tiny.denoiser(tiny.model_config(img_size=16), std=0.1)


def _close(a, b):
    d = (torch.as_tensor(np.asarray(a)).int() - torch.as_tensor(np.asarray(b)).int()).abs()
    # batched matmuls may differ in the last float bit between batch compositions: allow ±1 on rare pixels
    assert d.max() <= 1 and (d > 0).float().mean() < 1e-3


def test_image_depends_only_on_seed_and_index(denoiser):
    y = G.balanced_labels(3, per_class=2)
    full = G.generate_images(denoiser, y, SCFG, seed=5, batch_size=4)
    part = G.generate_images(denoiser, y[[4, 1]], SCFG, seed=5, batch_size=1, indices=[4, 1])
    _close(part[0], full[4])
    _close(part[1], full[1])
    other = G.generate_images(denoiser, y, SCFG, seed=6, batch_size=4)
    assert (other.int() - full.int()).abs().float().mean() > 1.0
    assert full.dtype == torch.uint8 and full.shape == (6, 3, 16, 16)
    # different indices → different noise; same (seed, index) → same noise
    n1 = G.indexed_noise([0, 1, 0], (3, 4, 4), 1.0, seed=0)
    assert torch.equal(n1[0], n1[2]) and not torch.equal(n1[0], n1[1])
    assert G.image_seed(0, 1) != G.image_seed(1, 0)


def test_balanced_labels():
    assert G.balanced_labels(3, per_class=2).tolist() == [0, 0, 1, 1, 2, 2]
    y = G.balanced_labels(4, num=10)
    assert np.bincount(y, minlength=4).tolist() == [3, 3, 2, 2]
    assert G.balanced_labels(5, classes=[4, 1], per_class=2).tolist() == [4, 4, 1, 1]
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        G.balanced_labels(3, classes=[3])
    with pytest.raises(ValueError, match="not both"):
        G.balanced_labels(3, per_class=1, num=3)
    with pytest.raises(ValueError, match="num must be >= 1"):
        G.balanced_labels(3, num=0)
    assert [G.rank_indices(7, r, 3) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="rank must lie in"):
        G.rank_indices(7, 3, 3)


def test_half_precision_weights_sample_the_same_numbers(denoiser):
    """cast_for_inference keeps the matmul weights in bf16: under bf16 autocast the products see the same
    bf16 weights autocast would have cast from float32 — identical samples, without the casts."""
    import copy

    y = torch.tensor([0, 1, 2, 2])
    z0 = G.indexed_noise(range(4), (3, 16, 16), 1.0, seed=3)
    cast = G.cast_for_inference(copy.deepcopy(denoiser), "bf16")
    halves = [n for n, p in cast.named_parameters() if p.dtype == torch.bfloat16]
    assert halves and all(p.dtype == torch.float32 for n, p in cast.named_parameters() if "norm" in n)
    a = G.sample_denoiser(denoiser, z0, y, SCFG, precision="bf16")
    b = G.sample_denoiser(cast, z0, y, SCFG, precision="bf16")
    assert torch.equal(a, b)
    assert G.cast_for_inference(denoiser, "fp32") is denoiser  # float32 sampling: untouched
    assert all(p.dtype == torch.float32 for p in denoiser.parameters())


def test_sampler_state_stays_float32_under_bf16(denoiser):
    """The float32 islands: the network runs in bf16, but the velocity it returns, every state z_t and every
    x-prediction of the trajectory, and the output stay float32 (a bf16 leak would show here)."""
    from jitkit.diffusion.sampling import Trajectory

    traj = Trajectory()
    z0 = G.indexed_noise(range(3), (3, 16, 16), 1.0, seed=0)
    out = G.sample_denoiser(denoiser, z0, torch.tensor([0, 1, 2]), SCFG, precision="bf16", trajectory=traj)
    assert out.dtype == torch.float32
    assert all(z.dtype == torch.float32 for z in traj.z) and all(x.dtype == torch.float32 for x in traj.x)
    v = G.denoiser_velocity(denoiser, "bf16")(z0, torch.full((3,), 0.5), torch.tensor([0, 1, 2]))
    assert v.dtype == torch.float32
    fp32 = G.sample_denoiser(denoiser, z0, torch.tensor([0, 1, 2]), SCFG, precision="fp32")
    assert (
        out - fp32
    ).abs().max() < 0.1  # bf16 inference close to fp32 (a stated tolerance, in [−1, 1] units)
