"""Batching: the batch plan, the data order, the rank chunks, chunk seeds and the two batch sources."""

from __future__ import annotations

import pytest
import torch

from jitkit.config import TrainConfig
from jitkit.train.batching import (
    Batches,
    batch_plan,
    chunk_seed,
    epoch_permutation,
    micro_batch,
    rank_chunk_indices,
)


def test_batch_plan_derives_accumulation_and_explains_non_divisible():
    p = batch_plan(TrainConfig(batch_size=32, global_batch=1024), world_size=2)
    assert (p.micro_batch, p.accum_steps, p.effective_batch) == (32, 16, 1024)
    p = batch_plan(TrainConfig(batch_size=8, accum_steps=3), world_size=2)
    assert p.effective_batch == 48
    with pytest.raises(ValueError) as ei:
        batch_plan(TrainConfig(batch_size=48, global_batch=1000), world_size=2)
    msg = str(ei.value)
    assert "1000" in msg and "48" in msg and "96" in msg and "960" in msg and "1056" in msg
    assert "such as 25" in msg  # the largest micro-batch ≤ 48 dividing 1000 / 2 = 500
    with pytest.raises(ValueError, match="contradicts"):
        batch_plan(TrainConfig(batch_size=8, accum_steps=3, global_batch=64), world_size=1)


def test_data_order_and_rank_chunks():
    p0 = epoch_permutation(100, seed=1, epoch=0)
    assert torch.equal(p0, epoch_permutation(100, seed=1, epoch=0))
    assert not torch.equal(p0, epoch_permutation(100, seed=1, epoch=1))
    assert sorted(p0.tolist()) == list(range(100))
    # two ranks × 2 accumulation steps cover each step's global batch exactly once, in chunk order
    plan = batch_plan(TrainConfig(batch_size=4, accum_steps=2), world_size=2)
    seen = {}
    for r in range(2):
        for s, c, idx in rank_chunk_indices(p0, plan, r, 0, 3):
            seen[(s, c)] = idx.tolist()
    for s in range(3):
        glob = sum((seen[(s, c)] for c in range(4)), [])
        assert glob == p0[s * 16 : (s + 1) * 16].tolist()
    assert len({chunk_seed(0, s, c) for s in range(50) for c in range(8)}) == 400


class _InMemory:
    """A data set with ``images`` and ``labels`` tensors (indexed directly, no DataLoader)."""

    img_size = 4

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8, generator=g)
        self.labels = torch.arange(40) % 5

    def __len__(self) -> int:
        return len(self.images)


class _Items(torch.utils.data.Dataset):
    """The same items, but only through ``__getitem__`` (read by a DataLoader)."""

    img_size = 4

    def __init__(self, base: _InMemory) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base.images[i], int(self.base.labels[i])


def test_in_memory_and_loader_batches_are_the_same_chunks():
    mem = _InMemory()
    plan = batch_plan(TrainConfig(batch_size=3, accum_steps=2), world_size=2)  # G = 12: 3 steps per epoch
    cpu = torch.device("cpu")
    kw = dict(rank=1, seed=7, device=cpu, data_workers=0)
    a = list(Batches(mem, plan, **kw).epoch(2, 1, 3))
    b = list(Batches(_Items(mem), plan, **kw).epoch(2, 1, 3))
    assert [c for c, _, _ in a] == [c for c, _, _ in b] == [1, 3, 1, 3]  # chunks a·W + rank, two steps
    perm = epoch_permutation(40, 7, 2)
    for (_, xa, ya), (_, xb, yb), (_, _, idx) in zip(a, b, rank_chunk_indices(perm, plan, 1, 1, 3)):
        assert xa.dtype == xb.dtype == torch.uint8 and xa.shape == (3, 3, 4, 4)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, mem.images[idx])
    assert list(Batches(mem, plan, **kw).epoch(0, 3, 3)) == []


def test_micro_batch_is_a_function_of_its_seed():
    x_u8 = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(6)
    cpu = torch.device("cpu")
    x1, y1, g1, s1 = micro_batch(x_u8, y, 11, hflip=True, device=cpu)
    x2, _, g2, _ = micro_batch(x_u8, y, 11, hflip=True, device=cpu)
    assert s1 == 11 and torch.equal(y1, y) and torch.equal(x1, x2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))  # the loss draws agree too
    plain, _, _, _ = micro_batch(x_u8, y, 11, hflip=False, device=cpu)
    assert plain.min() >= -1 and plain.max() <= 1
    flipped = [i for i in range(6) if not torch.equal(x1[i], plain[i])]
    assert flipped and all(torch.equal(x1[i], plain[i].flip(-1)) for i in flipped)
