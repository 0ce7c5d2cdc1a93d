"""Batching: effective batch = micro-batch m × accumulation k × world size W, the data order and the chunks.

Optimiser step s of an epoch consumes the images perm[s·G : (s+1)·G] (G = m·k·W) of the epoch's permutation,
cut into k·W chunks of m images; rank r takes chunks c = a·W + r for a = 0 … k−1. Every random draw of chunk c
(label drop, t, noise, flip, dropout) comes from a generator seeded by ``chunk_seed(seed, s, c)``, so a run
depends only on its config, whatever W and k are as long as m·k·W is the same.

Shape key: B micro-batch (= m), C channels, S image side; images [B, C, S, S] uint8 on the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from jitkit.config import RunConfig, TrainConfig
from jitkit.data import make_loader, random_hflip, to_model_range
from jitkit.data.loader import (
    IN_MEMORY_FRACTION,
    GiB,
    LoaderPlan,
    cpu_count,
    keeps_in_memory,
    plan_workers,
)
from jitkit.runtime.dist import local_world_size
from jitkit.runtime.memory import host_available_memory

__all__ = [
    "BatchPlan",
    "Batches",
    "IndexView",
    "MicroBatch",
    "batch_plan",
    "chunk_seed",
    "epoch_permutation",
    "micro_batch",
    "rank_chunk_indices",
    "training_data",
]

# (x [B, C, S, S] float in [-1, 1], y [B], the chunk's generator, its seed): what accumulate_gradients takes
MicroBatch = tuple[torch.Tensor, torch.Tensor, torch.Generator | None, int | None]


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int
    accum_steps: int
    world_size: int

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accum_steps * self.world_size


def batch_plan(tc: TrainConfig, world_size: int = 1) -> BatchPlan:
    """Micro-batch, accumulation and effective batch from the config and the world size.

    ``global_batch`` > 0 fixes the effective batch and derives the accumulation:
    accum = global_batch / (batch_size · world_size), which must be a whole number.
    """
    m, W = int(tc.batch_size), max(1, int(world_size))
    if not tc.global_batch or tc.global_batch <= 0:
        return BatchPlan(m, int(tc.accum_steps), W)
    per = m * W
    if tc.global_batch % per:
        lo = max(per, tc.global_batch // per * per)
        hi = lo + per if lo < tc.global_batch else lo
        per_rank = tc.global_batch // W
        fits = [b for b in range(1, per_rank + 1) if per_rank % b == 0 and b <= m]
        hint = ""
        if tc.global_batch % W == 0 and fits:
            hint = f", or a micro-batch dividing {per_rank} such as {fits[-1]}"
        raise ValueError(
            f"global batch {tc.global_batch} is not divisible by micro-batch {m} × world size {W} = "
            f"{per}: accumulation steps must be a whole number. Choose global_batch {lo} or {hi}{hint}"
        )
    accum = tc.global_batch // per
    if tc.accum_steps not in (1, accum):
        raise ValueError(
            f"accum_steps={tc.accum_steps} contradicts global_batch={tc.global_batch} with micro-batch "
            f"{m} × world size {W} (which needs {accum}); set only one of them"
        )
    return BatchPlan(m, accum, W)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch: a permutation of range(n) that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1))
    return torch.randperm(n, generator=g)


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """The seed of all random draws of micro-batch chunk ``chunk`` of optimiser step ``step``."""
    x = int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + int(chunk) * 0x94D049BB133111EB + 1
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & ((1 << 62) - 1)


def rank_chunk_indices(
    perm: torch.Tensor, plan: BatchPlan, rank: int, start_step: int, steps: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(step, chunk, indices [m]) this rank consumes from ``start_step`` to ``steps`` of an epoch."""
    G, m, W = plan.effective_batch, plan.micro_batch, plan.world_size
    for s in range(start_step, steps):
        for a in range(plan.accum_steps):
            c = a * W + rank
            lo = s * G + c * m
            yield s, c, perm[lo : lo + m]


def micro_batch(
    x_u8: torch.Tensor, y: torch.Tensor, seed: int, *, hflip: bool, device: torch.device
) -> MicroBatch:
    """A chunk's model inputs: uint8 images [B, C, S, S] → float in [-1, 1], flipped (if ``hflip``) by the
    chunk's own generator, which also draws its label drop, t and noise in the loss."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = to_model_range(x_u8)
    if hflip:
        x = random_hflip(x, generator=gen)
    return x, y, gen, seed


def training_data(cfg: RunConfig, plan: BatchPlan) -> tuple[Any, list[str]]:
    """The training set of ``cfg.data`` and its class list, checked against the model and the batch plan."""
    from jitkit.data import build_dataset

    ds = build_dataset(cfg.data, "train")
    if not hasattr(ds, "img_size"):
        raise ValueError(f"data {cfg.data.data!r} is not an image data set; training needs images")
    if getattr(ds, "classes", None) is None:
        raise ValueError(f"data {cfg.data.data!r} has no class list")
    classes = list(ds.classes)
    if int(ds.img_size) != cfg.model.img_size:
        raise ValueError(
            f"the data has {ds.img_size}px images but model {cfg.model.name} is configured for "
            f"img_size={cfg.model.img_size}; set model.img_size={ds.img_size} (and data.img_size)"
        )
    if len(classes) != cfg.model.num_classes:
        shown = ", ".join(classes[:5]) + (", …" if len(classes) > 5 else "")
        raise ValueError(
            f"the data has {len(classes)} class{'es' if len(classes) != 1 else ''} ({shown}) but "
            f"model.num_classes={cfg.model.num_classes}; set model.num_classes={len(classes)} (a resumed run "
            f"keeps its model: resume it on data with {cfg.model.num_classes} classes, or start a new run)"
        )
    G = plan.effective_batch
    if len(ds) < G:
        raise ValueError(
            f"the data set has {len(ds)} images, fewer than one effective batch of {G} "
            f"(micro-batch {plan.micro_batch} × accumulation {plan.accum_steps} × world size "
            f"{plan.world_size}); lower the batch size"
        )
    return ds, classes


class IndexView(torch.utils.data.Dataset):
    """``base`` read one micro-batch per key: ``view[indices]`` → (images [B, C, S, S] uint8, labels [B],
    skipped) of the items at ``indices``, in that order. A data set with ``read_rows`` (a prepared cache:
    sorted file reads) reads the batch at once; others are read item by item (decoded in the DataLoader
    worker). ``skipped``: the (file, reason) of unreadable images the worker replaced while reading this
    batch (a data set with ``take_skipped``), for the main process to report once for all workers."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.img_size = getattr(base, "img_size", 0)
        if hasattr(base, "defer_skipped"):
            base.defer_skipped = True  # the workers hand their replaced files back instead of printing

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        read_rows = getattr(self.base, "read_rows", None)
        if read_rows is not None:
            return (*read_rows(indices), [])
        items = [self.base[i] for i in indices]
        x = torch.stack([torch.as_tensor(img) for img, _ in items])  # [B, C, S, S]
        y = torch.as_tensor([int(label) for _, label in items], dtype=torch.int64)
        take = getattr(self.base, "take_skipped", None)
        return x, y, (take() if take is not None else [])


class _ChunkKeys(torch.utils.data.Sampler):
    """The index lists of the current pass's chunks, set before each pass: one DataLoader (and its persistent
    workers) serves every epoch."""

    def __init__(self) -> None:
        self.keys: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class Batches:
    """This rank's chunks of an epoch as (chunk, images [B, C, S, S] uint8, labels [B]) on ``device``.

    Two sources give the same sequence. Data that sits in memory is indexed in the training process: an
    in-memory set (``shapes``) always, a memory-mapped cache when its bytes fit comfortably in the host's
    free memory (``data.loader.keeps_in_memory``; its pages then stay in the page cache). Anything else, a
    cache larger than that or an image folder, is read by DataLoader workers, one micro-batch per key (a
    cache's rows by sorted file reads), prefetched, pinned on CUDA, the workers kept across epochs and sized
    per host (``worker_plan``). ``stream`` forces the choice (None: decided as above; the decision and why
    are in ``.reason``). A data set's own ``hflip`` is turned off: flips happen on the device, from each
    chunk's generator.
    """

    def __init__(
        self,
        dataset: Any,
        plan: BatchPlan,
        *,
        rank: int,
        seed: int,
        device: torch.device,
        data_workers: int | None,
        stream: bool | None = None,
    ) -> None:
        self.ds, self.plan, self.rank, self.seed = dataset, plan, rank, seed
        self.device = torch.device(device)
        self.workers = data_workers
        self._keys = _ChunkKeys()
        self._loader: torch.utils.data.DataLoader | None = None
        if hasattr(dataset, "hflip"):
            dataset.hflip = False
        indexable = hasattr(dataset, "images") and hasattr(dataset, "labels")
        if stream is False and not indexable:
            raise ValueError(
                f"stream=False needs a data set with .images and .labels tensors; found "
                f"{type(dataset).__name__}, which is read item by item (use stream=None)"
            )
        self.in_memory, self.reason = indexable and not stream, "read by DataLoader workers"
        if indexable:
            images = dataset.images
            nbytes = images.numel() * images.element_size()
            mmap = bool(getattr(dataset, "memory_mapped", False))
            size = f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB else f"{nbytes / (1 << 20):.1f} MiB"
            if stream is not None:
                self.reason = f"{'streamed' if stream else 'in memory'} as requested (stream={stream})"
            elif not mmap:
                self.reason = f"in memory ({size} held by the data set)"
            else:
                free = host_available_memory()
                self.in_memory = keeps_in_memory(nbytes, free)
                free_s = "unknown" if free is None else f"{free / GiB:.1f} GiB"
                self.reason = (
                    f"{'in memory' if self.in_memory else 'streamed'}: memory-mapped {size} against {free_s} "
                    f"free (in memory up to {IN_MEMORY_FRACTION:g} of it, or when small)"
                )
        if self.in_memory:  # up to 1 GiB of data that is not memory-mapped moves to the device
            self.images = dataset.images.to(self.device) if nbytes < GiB and not mmap else dataset.images
            self.labels = torch.as_tensor(dataset.labels).to(self.images.device)

    def epoch(
        self, epoch: int, start_step: int, end_step: int
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """The chunks of steps ``start_step`` … ``end_step − 1`` of ``epoch``, in the order they are used."""
        if getattr(self.ds, "streaming", False):
            yield from self._stream_epoch(epoch, start_step, end_step)
            return
        perm = epoch_permutation(len(self.ds), self.seed, epoch)
        chunks = [
            (c, idx) for _, c, idx in rank_chunk_indices(perm, self.plan, self.rank, start_step, end_step)
        ]
        if not chunks:
            return
        if self.in_memory:
            for c, idx in chunks:
                idx = idx.to(self.images.device)
                x = self.images.index_select(0, idx).to(self.device, non_blocking=True)
                yield c, x, self.labels.index_select(0, idx).to(self.device, non_blocking=True)
            return
        self._keys.keys = [idx.tolist() for _, idx in chunks]
        report = getattr(self.ds, "report_skipped", None)
        for (c, _), (x, y, skipped) in zip(chunks, self.loader()):
            if skipped and report is not None:
                report(skipped)  # once for all workers (each would otherwise print its own first one)
            yield c, x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _stream_epoch(
        self, epoch: int, start_step: int, end_step: int
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Streamed data (WebDataset shards): this rank's chunks come in the order its share of the epoch
        is read (``data.webdataset``), not from the epoch permutation; chunk ids and seeds are as above."""
        k, W = self.plan.accum_steps, self.plan.world_size
        ids = [a * W + self.rank for _ in range(start_step, end_step) for a in range(k)]
        if not ids:
            return
        chunks = self.ds.chunks(
            epoch,
            self.seed,
            rank=self.rank,
            world=W,
            micro=self.plan.micro_batch,
            workers=self.worker_plan(),
            start=start_step * k,
            count=len(ids),
            device=self.device,
        )
        try:
            for c, (x, y, _) in zip(ids, chunks):
                yield c, x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        finally:
            chunks.close()  # shuts the epoch's DataLoader workers down

    def loader(self) -> torch.utils.data.DataLoader:
        """The DataLoader of the streaming path (made on first use): ``IndexView`` keyed by this pass's chunks."""
        if self._loader is None:
            self._loader = make_loader(
                IndexView(self.ds), None, sampler=self._keys, workers=self.worker_plan(), device=self.device
            )
        return self._loader

    def worker_plan(self) -> LoaderPlan:
        """This rank's DataLoader workers: ``data_workers`` when ≥ 0, else ``plan_workers`` over this host's
        CPUs and free memory shared by the job's processes on this host (``runtime.dist.local_world_size()``,
        torchrun's LOCAL_WORLD_SIZE: 8 on each of 2 nodes × 8 GPUs, not WORLD_SIZE = 16)."""
        if self.workers is not None and self.workers >= 0:
            return plan_workers(cpus=0, mem_available=0, batch_bytes=0, requested=self.workers)
        s = int(getattr(self.ds, "img_size", 256) or 256)
        return plan_workers(
            cpus=cpu_count(),
            mem_available=host_available_memory(),
            batch_bytes=self.plan.micro_batch * 3 * s * s,
            processes_per_host=min(self.plan.world_size, local_world_size()),
        )
