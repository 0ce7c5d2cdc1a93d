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
from jitkit.data import random_hflip, to_model_range

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
        raise ValueError(
            f"the data has {len(classes)} classes but model.num_classes={cfg.model.num_classes}; "
            f"set model.num_classes={len(classes)}"
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
    """The items of ``base`` at ``indices``, in that order (the rank's share of an epoch, from a position)."""

    def __init__(self, base: Any, indices: torch.Tensor) -> None:
        self.base, self.indices = base, indices.tolist()
        self.img_size = getattr(base, "img_size", 0)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


class Batches:
    """This rank's chunks of an epoch as (chunk, images [B, C, S, S] uint8, labels [B]) on ``device``: indexed
    from in-memory tensors when the data set has them, else read through a DataLoader."""

    def __init__(
        self,
        dataset: Any,
        plan: BatchPlan,
        *,
        rank: int,
        seed: int,
        device: torch.device,
        data_workers: int | None,
    ) -> None:
        self.ds, self.plan, self.rank, self.seed = dataset, plan, rank, seed
        self.device = device
        self.workers = data_workers
        self.in_memory = hasattr(dataset, "images") and hasattr(dataset, "labels")
        if self.in_memory:
            images, labels = dataset.images, dataset.labels
            small = images.numel() * images.element_size() < (1 << 30)
            mmap = bool(getattr(dataset, "memory_mapped", False))
            self.images = images.to(device) if small and not mmap else images
            self.labels = torch.as_tensor(labels).to(self.images.device)
        elif hasattr(dataset, "hflip"):
            dataset.hflip = False  # flips happen on the device, from the chunk's generator

    def epoch(
        self, epoch: int, start_step: int, end_step: int
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """The chunks of steps ``start_step`` … ``end_step − 1`` of ``epoch``, in the order they are used."""
        perm = epoch_permutation(len(self.ds), self.seed, epoch)
        chunks = list(rank_chunk_indices(perm, self.plan, self.rank, start_step, end_step))
        if not chunks:
            return
        if self.in_memory:
            for _, c, idx in chunks:
                idx = idx.to(self.images.device)
                x = self.images.index_select(0, idx).to(self.device, non_blocking=True)
                yield c, x, self.labels.index_select(0, idx).to(self.device, non_blocking=True)
            return
        loader = self._loader(torch.cat([idx for _, _, idx in chunks]))
        for (_, c, _), (x, y) in zip(chunks, loader):
            yield (
                c,
                x.to(self.device, non_blocking=True),
                torch.as_tensor(y).to(self.device, non_blocking=True),
            )

    def _loader(self, flat: torch.Tensor) -> Any:
        """A DataLoader over the items at ``flat`` in that order, in batches of m (workers sized from the host
        when ``data_workers`` is None or negative)."""
        from jitkit.data import make_loader
        from jitkit.data.loader import available_memory, cpu_count, plan_workers

        m = self.plan.micro_batch
        workers = self.workers
        if workers is None or workers < 0:
            s = int(getattr(self.ds, "img_size", 256) or 256)
            workers = plan_workers(
                cpus=cpu_count(),
                mem_available=available_memory(),
                batch_bytes=m * 3 * s * s,
                world_size=self.plan.world_size,
            ).workers
        return make_loader(
            IndexView(self.ds, flat), m, shuffle=False, workers=workers, device=self.device, drop_last=False
        )
