"""DataLoader construction with worker count and prefetch sized from the host (never a fixed number).

A documented run OOM-killed a 24 GB host at epoch 1 with 12 workers per GPU: every worker is a process
holding its own prefetched batches (and, with spawn, a copy of the interpreter). jitkit sizes workers from
the CPU cores available to this process (split across the processes on this host: torchrun's
LOCAL_WORLD_SIZE, not the global WORLD_SIZE) and the free memory.

``keeps_in_memory`` decides whether a memory-mapped data set is indexed in place (its pages stay in the page
cache) or streamed through workers (it does not fit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from jitkit.runtime.dist import local_world_size
from jitkit.runtime.memory import host_available_memory

GiB = 1 << 30
# Rough resident cost of one DataLoader worker process besides its batches (interpreter + torch + decoders).
WORKER_BASE_BYTES = 512 * (1 << 20)
# Fraction of the free memory the workers of all ranks on this host may use together.
MEMORY_FRACTION = 0.5
MAX_WORKERS = 16
# A memory-mapped data set is indexed in place when its bytes are at most this fraction of the free memory
# (the page cache then holds it after one epoch, shared by all ranks on the host) or at most
# ALWAYS_IN_MEMORY_BYTES; otherwise it is streamed through DataLoader workers.
IN_MEMORY_FRACTION = 0.5
ALWAYS_IN_MEMORY_BYTES = 256 * (1 << 20)


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def keeps_in_memory(nbytes: int, mem_available: int | None) -> bool:
    """True when a memory-mapped data set of ``nbytes`` fits comfortably in the host's free memory:
    nbytes ≤ ALWAYS_IN_MEMORY_BYTES, or nbytes ≤ IN_MEMORY_FRACTION · ``mem_available`` (unknown free memory:
    only the first rule)."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, found {nbytes}")
    if nbytes <= ALWAYS_IN_MEMORY_BYTES:
        return True
    return mem_available is not None and nbytes <= IN_MEMORY_FRACTION * mem_available


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
    processes_per_host: int | None = None,
    requested: int = -1,
    world_size: int | None = None,
) -> LoaderPlan:
    """Choose DataLoader workers and prefetch for one of ``processes_per_host`` training processes that share
    this host's ``cpus`` and ``mem_available`` (under torchrun: LOCAL_WORLD_SIZE, not WORLD_SIZE).

    requested >= 0 wins. Otherwise, with P = processes_per_host: CPU cap = cpus // P − 1 (one core per
    process stays with the training loop); memory cap = MEMORY_FRACTION·free / P / (WORKER_BASE_BYTES +
    prefetch·batch bytes·2) (each prefetched batch exists as per-sample tensors and a collated copy); workers
    = min(CPU cap, memory cap, 16), at least 0. Prefetch is 2, or 1 when memory allows fewer than 2 workers
    at 2. Unknown free memory counts as 4 GiB. P defaults to 1. ``world_size`` is the former name of
    ``processes_per_host`` (it always meant the processes on this host), kept for callers not yet renamed.
    """
    if world_size is not None:
        if processes_per_host is not None:
            raise ValueError(
                f"world_size is the former name of processes_per_host: give one of them, found both "
                f"(world_size={world_size}, processes_per_host={processes_per_host})"
            )
        processes_per_host = world_size
    if requested is not None and requested >= 0:
        pf = 2 if requested > 0 else None
        return LoaderPlan(int(requested), pf, f"{requested} workers as requested")
    per_host = max(1, int(processes_per_host or 1))
    mem = mem_available if mem_available is not None else 4 * GiB
    cpu_cap = max(0, cpus // per_host - 1)
    budget = MEMORY_FRACTION * mem / per_host
    prefetch = 2
    mem_cap = int(budget // (WORKER_BASE_BYTES + prefetch * batch_bytes * 2))
    if mem_cap < 2:
        prefetch = 1
        mem_cap = int(budget // (WORKER_BASE_BYTES + prefetch * batch_bytes * 2))
    workers = max(0, min(cpu_cap, mem_cap, MAX_WORKERS))
    reason = (
        f"{workers} workers (cpus {cpus}, {per_host} process(es) on this host, free memory {mem / GiB:.1f} GiB, "
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
    batch_size: int | None,
    *,
    shuffle: bool = True,
    seed: int = 0,
    workers: int | LoaderPlan = -1,
    device: str | torch.device = "cpu",
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    processes_per_host: int | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader for ``dataset`` sized for this host.

    workers = −1 picks the count from CPUs and free memory (``plan_workers``, over ``processes_per_host``
    processes; default: the processes of this job on this host, ``runtime.dist.local_world_size()``, at most
    ``world_size``); in-memory data sets (those with ``.images``) that are not memory-mapped default to 0
    workers since there is nothing to decode. A ``LoaderPlan`` is used as it is. Workers persist across
    epochs and prefetch ``prefetch_factor`` batches each; pin_memory only when ``device`` is CUDA.

    Order: a given ``sampler`` decides it (``shuffle``, ``seed``, ``rank`` and ``world_size`` then only size
    the workers); with ``batch_size=None`` each key the sampler yields is one whole batch, read at once by
    ``dataset[key]``. Otherwise with world_size > 1 a DistributedSampler splits the data (call
    ``loader.sampler.set_epoch(epoch)`` each epoch), and shuffling uses a generator seeded by ``seed``. The
    chosen plan is stored as ``loader.plan``.
    """
    if batch_size is None:
        if sampler is None:
            raise ValueError(
                "batch_size=None (the data set reads whole batches) needs a sampler of batch keys"
            )
    elif batch_size < 1:
        raise ValueError(
            f"batch_size must be >= 1 (or None with a sampler of batch keys), found {batch_size}"
        )
    dev = torch.device(device)
    in_memory = hasattr(dataset, "images") and not getattr(dataset, "memory_mapped", False)
    if isinstance(workers, LoaderPlan):
        plan = workers
    elif workers is None or workers < 0:
        if batch_size is None and not in_memory:
            raise ValueError(
                "workers=-1 cannot size workers for batch_size=None (the bytes of a batch are unknown here): "
                "give workers as a count or as a LoaderPlan from plan_workers"
            )
        if in_memory:
            plan = LoaderPlan(0, None, "0 workers (data set is in memory)")
        else:
            if processes_per_host is None:
                processes_per_host = min(max(1, world_size), local_world_size())
            plan = plan_workers(
                cpus=cpu_count(),
                mem_available=host_available_memory(),
                batch_bytes=int(batch_size or 0) * _item_bytes(dataset),
                processes_per_host=processes_per_host,
            )
    else:
        plan = plan_workers(cpus=0, mem_available=0, batch_bytes=0, requested=workers)

    generator = None
    if sampler is None and world_size > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    elif sampler is None and shuffle:
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
        drop_last=drop_last if batch_size is not None else False,
        **kwargs,
    )
    loader.plan = plan  # type: ignore[attr-defined]
    return loader
