"""DataLoader construction with worker count and prefetch sized from the host (never a fixed number).

A documented run OOM-killed a 24 GB host at epoch 1 with 12 workers per GPU: every worker is a process
holding its own prefetched batches (and, with spawn, a copy of the interpreter). jitkit sizes workers from
the CPU cores available to this process (split across the ranks on the host) and the free memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

GiB = 1 << 30
# Rough resident cost of one DataLoader worker process besides its batches (interpreter + torch + decoders).
WORKER_BASE_BYTES = 512 * (1 << 20)
# Fraction of the free memory the workers of all ranks on this host may use together.
MEMORY_FRACTION = 0.5
MAX_WORKERS = 16


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Free memory in bytes: MemAvailable from /proc/meminfo, else sysconf available pages, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class LoaderPlan:
    workers: int
    prefetch_factor: int | None  # None when workers == 0
    reason: str


def plan_workers(
    *,
    cpus: int,
    mem_available: int | None,
    batch_bytes: int,
    world_size: int = 1,
    requested: int = -1,
) -> LoaderPlan:
    """Choose DataLoader workers and prefetch for one rank.

    requested >= 0 wins. Otherwise: CPU cap = cpus // world_size − 1 (one core per rank stays with the
    training loop); memory cap = MEMORY_FRACTION·free / world_size / (WORKER_BASE_BYTES + prefetch·batch
    bytes·2) (each prefetched batch exists as per-sample tensors and a collated copy); workers =
    min(CPU cap, memory cap, 16), at least 0. Prefetch is 2, or 1 when memory allows fewer than 2 workers at 2.
    Unknown free memory counts as 4 GiB.
    """
    if requested is not None and requested >= 0:
        pf = 2 if requested > 0 else None
        return LoaderPlan(int(requested), pf, f"{requested} workers as requested")
    world_size = max(1, int(world_size))
    mem = mem_available if mem_available is not None else 4 * GiB
    cpu_cap = max(0, cpus // world_size - 1)
    budget = MEMORY_FRACTION * mem / world_size
    prefetch = 2
    mem_cap = int(budget // (WORKER_BASE_BYTES + prefetch * batch_bytes * 2))
    if mem_cap < 2:
        prefetch = 1
        mem_cap = int(budget // (WORKER_BASE_BYTES + prefetch * batch_bytes * 2))
    workers = max(0, min(cpu_cap, mem_cap, MAX_WORKERS))
    reason = (
        f"{workers} workers (cpus {cpus}, world size {world_size}, free memory {mem / GiB:.1f} GiB, "
        f"batch {batch_bytes / (1 << 20):.1f} MiB)"
    )
    return LoaderPlan(workers, prefetch if workers > 0 else None, reason)


def _item_bytes(dataset: Dataset) -> int:
    s = int(getattr(dataset, "img_size", 0) or 0)
    if s > 0:
        return 3 * s * s
    try:
        x = dataset[0][0]
        return int(x.numel() * x.element_size())
    except Exception:
        return 3 * 256 * 256


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    workers: int = -1,
    device: str | torch.device = "cpu",
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader for ``dataset`` sized for this host.

    workers = −1 picks the count from CPUs and free memory (``plan_workers``); in-memory data sets (those
    with ``.images``) that are not memory-mapped default to 0 workers since there is nothing to decode.
    pin_memory only when ``device`` is CUDA. With world_size > 1 a DistributedSampler splits the data
    (call ``loader.sampler.set_epoch(epoch)`` each epoch); otherwise shuffling uses a generator seeded by
    ``seed``. The chosen plan is stored as ``loader.plan``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    dev = torch.device(device)
    in_memory = hasattr(dataset, "images") and not getattr(dataset, "memory_mapped", False)
    if workers is None or workers < 0:
        if in_memory:
            plan = LoaderPlan(0, None, "0 workers (data set is in memory)")
        else:
            plan = plan_workers(
                cpus=cpu_count(),
                mem_available=available_memory(),
                batch_bytes=batch_size * _item_bytes(dataset),
                world_size=world_size,
            )
    else:
        plan = plan_workers(cpus=0, mem_available=0, batch_bytes=0, requested=workers)

    sampler = None
    generator = None
    if world_size > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    elif shuffle:
        generator = torch.Generator().manual_seed(int(seed))

    kwargs: dict = {}
    if plan.workers > 0:
        kwargs["prefetch_factor"] = plan.prefetch_factor
        kwargs["persistent_workers"] = True
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        generator=generator,
        num_workers=plan.workers,
        pin_memory=dev.type == "cuda",
        drop_last=drop_last,
        **kwargs,
    )
    loader.plan = plan  # type: ignore[attr-defined]
    return loader
