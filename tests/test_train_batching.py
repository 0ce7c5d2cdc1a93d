"""Batching: the batch plan, the data order, the rank chunks, chunk seeds and the two batch sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import jitkit.data.loader as loader_mod
import jitkit.train.batching as batching_mod
from jitkit.config import DataConfig, TrainConfig
from jitkit.data import build_dataset
from jitkit.data.cache import CacheDataset, open_cache, prepare_cache
from jitkit.data.folder import ImageFolderDataset
from jitkit.data.loader import GiB
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


@pytest.fixture
def cache(tmp_path):
    """A prepared cache of 30 generated PNGs (3 classes × 10) at 8 px, and its source folder."""
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    for c in ("a", "b", "c"):
        (src / c).mkdir(parents=True)
        for k in range(10):
            h, w = rng.integers(9, 20, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / c / f"{k}.png")
    return prepare_cache(src, 8, tmp_path / "cache", workers=1, progress=False), src


def _epochs(
    batches: Batches, spans: list[tuple[int, int, int]]
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    return [item for e, lo, hi in spans for item in batches.epoch(e, lo, hi)]


def test_cache_in_memory_and_streamed_give_the_same_chunks(cache):
    path, src = cache
    plan = batch_plan(TrainConfig(batch_size=3, accum_steps=2), world_size=2)  # G = 12: 2 steps per epoch
    cpu = torch.device("cpu")
    spans = [(0, 0, 2), (1, 1, 2), (2, 0, 2)]  # whole epochs and a resumed one, through one loader
    for rank in (0, 1):
        kw = dict(rank=rank, seed=5, device=cpu)
        ds = CacheDataset(path, hflip=True)
        mem = Batches(ds, plan, data_workers=0, stream=False, **kw)
        assert mem.in_memory and not ds.hflip  # flips belong to the device, from the chunk's generator
        ref = _epochs(mem, spans)
        assert [c for c, _, _ in ref] == [rank, 2 + rank] * 5
        # the expected rows, straight from the permutation
        want = [
            idx
            for e, lo, hi in spans
            for _, _, idx in rank_chunk_indices(epoch_permutation(30, 5, e), plan, rank, lo, hi)
        ]
        for (_, x, y), idx in zip(ref, want):
            assert x.dtype == torch.uint8 and x.shape == (3, 3, 8, 8) and y.dtype == torch.int64
            assert torch.equal(x, ds.images[idx]) and torch.equal(y, ds.labels[idx])
        others = {
            "streamed in the training process": Batches(
                CacheDataset(path, hflip=True), plan, data_workers=0, stream=True, **kw
            ),
            "streamed by 2 workers": Batches(
                CacheDataset(path, hflip=True), plan, data_workers=2, stream=True, **kw
            ),
            "image folder, flipping on": Batches(
                ImageFolderDataset(src, 8, hflip=True, verbose=False), plan, data_workers=0, **kw
            ),
        }
        for name, b in others.items():
            assert not b.in_memory, name
            got = _epochs(b, spans)
            assert len(got) == len(ref), name
            for (ca, xa, ya), (cb, xb, yb) in zip(ref, got):
                assert ca == cb and torch.equal(xa, xb) and torch.equal(ya, yb), name
        assert others["streamed by 2 workers"].loader().num_workers == 2


def test_host_memory_decides_between_in_memory_and_streaming(cache, monkeypatch):
    path, _ = cache
    plan = batch_plan(TrainConfig(batch_size=3), world_size=1)
    kw = dict(rank=0, seed=0, device=torch.device("cpu"), data_workers=0)
    nbytes = 30 * 3 * 8 * 8
    free = [None]
    monkeypatch.setattr(batching_mod, "host_available_memory", lambda: free[0])
    # a small cache always sits in memory, even when the free memory is unknown
    assert Batches(open_cache(path), plan, **kw).in_memory
    monkeypatch.setattr(loader_mod, "ALWAYS_IN_MEMORY_BYTES", 0)  # pretend this cache is big
    assert not Batches(open_cache(path), plan, **kw).in_memory
    free[0] = 2 * nbytes  # fits within half of the free memory
    b = Batches(open_cache(path), plan, **kw)
    assert b.in_memory and "in memory" in b.reason
    free[0] = 2 * nbytes - 1
    b = Batches(open_cache(path), plan, **kw)
    assert not b.in_memory and b.reason.startswith("streamed")
    # the streamed path reads one micro-batch of rows at a time from the file, never the whole memory map
    reads: list[int] = []
    real = CacheDataset.read_rows

    def spy(self, indices):
        reads.append(len(indices))
        return real(self, indices)

    monkeypatch.setattr(CacheDataset, "read_rows", spy)
    assert len(list(b.epoch(0, 0, 10))) == 10 and reads == [3] * 10
    # data that is already in memory (not memory-mapped) is never streamed
    free[0] = 0
    shapes = build_dataset(DataConfig(data="shapes", img_size=16, per_class=2, hflip=True))
    assert Batches(shapes, plan, **kw).in_memory and not shapes.hflip
    with pytest.raises(ValueError, match="stream=False needs a data set with .images"):
        Batches(_Items(_InMemory()), plan, stream=False, **kw)


def test_workers_are_sized_by_the_processes_on_this_host(monkeypatch):
    monkeypatch.setattr(batching_mod, "cpu_count", lambda: 64)
    monkeypatch.setattr(batching_mod, "host_available_memory", lambda: 512 * GiB)
    plan = batch_plan(TrainConfig(batch_size=4), world_size=16)
    ds = _Items(_InMemory())

    def workers(world: str, local: str | None, requested: int | None = -1) -> int:
        monkeypatch.setenv("WORLD_SIZE", world)
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        b = Batches(ds, plan, rank=9, seed=0, device=torch.device("cpu"), data_workers=requested)
        return b.worker_plan().workers

    assert workers("16", "8") == 64 // 8 - 1  # 2 nodes × 8 GPUs: 7 per rank, not 64 // 16 - 1 = 3
    assert workers("16", "16") == 64 // 16 - 1  # 16 processes on one host
    assert workers("16", None) == 3  # without LOCAL_WORLD_SIZE: all ranks count as local
    assert workers("16", "2") == loader_mod.MAX_WORKERS  # 64 // 2 − 1 = 31, capped
    assert workers("16", "8", requested=5) == 5 and workers("16", "8", requested=None) == 7


def test_an_unreadable_image_is_reported_once_for_all_workers(tmp_path, capsys):
    # JPEGs cut short pass the header check and fail while decoding, in whichever worker reads them
    import io

    rng = np.random.default_rng(0)
    (tmp_path / "c").mkdir()
    for k in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "c" / f"{k}.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    for k in range(6):
        (tmp_path / "c" / f"cut{k}.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    ds = ImageFolderDataset(tmp_path, 8)
    assert len(ds) == 18  # all pass the header check
    capsys.readouterr()
    plan = batch_plan(TrainConfig(batch_size=3), world_size=1)
    b = Batches(ds, plan, rank=0, seed=0, device=torch.device("cpu"), data_workers=2, stream=None)
    for epoch in range(2):
        assert len(list(b.epoch(epoch, 0, 6))) == 6
    err = capsys.readouterr().err
    assert err.count("skipped unreadable image") == 1 and "cut" in err, err
    assert ds._reported >= 6  # every replaced file was counted, by the main process
