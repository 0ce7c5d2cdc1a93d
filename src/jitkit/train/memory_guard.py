"""The memory checks of training and sampling: the estimated peak (:mod:`jitkit.train.peak_memory`) against the
free memory of the device (:func:`jitkit.runtime.memory.check_fits`), before the first large allocation, with
what would fit in the refusal.

On a CPU every process of a host shares its memory, so the need is the estimate times the processes of the host;
on a GPU it is one process's. A refusal is an :class:`~jitkit.runtime.memory.InsufficientMemory` (a
ValueError: ``jitkit`` exits with code 2 and the message); ``JITKIT_MEMORY_CHECK=off`` makes it a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from jitkit.config import ModelConfig, RunConfig
from jitkit.runtime import dist
from jitkit.runtime.memory import (
    InsufficientMemory,
    check_fits,
    device_free_memory,
    fmt_bytes,
    memory_check_enabled,
)
from jitkit.train.batching import BatchPlan
from jitkit.train.peak_memory import estimate_memory, estimate_sampling_memory

__all__ = ["agreed", "check_run", "check_sampling_memory", "check_training_memory", "largest_fitting"]


def agreed(
    check: Callable[[int | None], str | None], device: torch.device | str, main: bool | None = None
) -> str | None:
    """Run ``check(free)`` once, on rank 0, with the least free memory any rank measured on its ``device`` (under
    ``torchrun`` on several hosts the host with the least decides; None where no rank could tell), and give every
    rank its outcome: the same :class:`InsufficientMemory` raised everywhere, or its note returned everywhere.
    Ranks deciding each on their own would disagree near the limit, and a rank that stopped alone would leave the
    others waiting in their next collective. Without a process group every process decides for itself."""
    if main is None:
        main = dist.rank() == 0 or not dist.is_initialized()
    frees = dist.gather_to_main(device_free_memory(device))  # a collective: every rank measures
    verdict = None
    if main:
        known = [f for f in frees or [] if f is not None]
        try:
            verdict = ("note", check(min(known) if known else None))
        except InsufficientMemory as e:
            verdict = ("refuse", str(e))
    kind, text = dist.broadcast_object(verdict)
    if kind == "refuse":
        raise InsufficientMemory(text)
    return text


def largest_fitting(need, budget: int, upper: int) -> int:
    """The largest n in 1 … ``upper`` with ``need(n)`` ≤ ``budget`` (``need`` grows with n), 0 if none."""
    if need(1) > budget:
        return 0
    lo, hi = 1, max(1, upper)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _processes_sharing(device: torch.device, processes_on_host: int) -> int:
    return max(1, processes_on_host) if device.type in ("cpu", "mps") else 1


def _estimated_in(precision: str) -> tuple[str, str]:
    """(how the message names the precision, the precision estimated): ``auto`` is not resolved yet, so it is
    estimated in bf16, the lower estimate — a check then refuses only what fits in no precision."""
    if precision == "auto":
        return "precision auto, estimated in bf16", "bf16"
    return precision, precision


def _sharing(share: int) -> str:
    return f", {share} processes on this host)" if share > 1 else ")"


def check_training_memory(
    cfg: ModelConfig,
    micro_batch: int,
    *,
    precision: str,
    device: torch.device | str,
    grad_checkpoint: bool | None = None,
    world_size: int = 1,
    processes_on_host: int = 1,
    fsdp: bool = False,
    evaluation: bool = False,
    effective_batch: int | None = None,
    free: int | None = None,
    flags: bool = True,
) -> str | None:
    """Refuse a training run whose estimated peak does not fit (see the module docstring); None, or a warning
    to print. ``precision`` is resolved (fp32 | bf16 | fp16); ``effective_batch`` (default: micro-batch × world
    size) is what the suggested micro-batch keeps through accumulation. ``precision="auto"`` (not resolved yet)
    checks the lower, half-precision estimate: it refuses only what no precision would fit. ``flags=False``:
    what fits is said without ``jitkit train``'s flags (for the benchmark's own)."""
    device = torch.device(device)
    label, precision = _estimated_in(precision)
    share = _processes_sharing(device, processes_on_host)
    kw = dict(
        precision=precision,
        grad_checkpoint=grad_checkpoint,
        world_size=world_size,
        fsdp=fsdp,
        device_kind=device.type,
        evaluation=evaluation,
    )
    est = estimate_memory(cfg, micro_batch, **kw)
    free = device_free_memory(device) if free is None else free
    if free is None:
        return None
    what = f"{cfg.name} training at micro-batch {micro_batch} ({label}" + _sharing(share)
    detail = est.breakdown() + (f"; × {share} processes" if share > 1 else "")
    if share * est.total <= free:
        return check_fits(share * est.total, device, what=what, detail=detail, free=free)
    G = effective_batch or micro_batch * world_size
    per_process = max(1, G // max(1, world_size))  # micro-batch × accumulation: a fitting divisor keeps G

    def need(m: int, **change) -> int:  # bytes of micro-batch m on this device, the estimate's terms changed
        return share * estimate_memory(cfg, m, **{**kw, **change}).total

    if flags:  # a divisor of micro-batch × accumulation, so that --global-batch keeps the effective batch
        fit = max((d for d in _divisors(per_process) if d < micro_batch and need(d) <= free), default=0)
    else:
        fit = largest_fitting(need, free, micro_batch - 1)
    if fit and flags:
        fix = (
            f"micro-batch {fit} fits: --batch-size {fit} --global-batch {G} keeps the effective batch through "
            f"gradient accumulation (or --batch-size auto: the planner chooses)"
        )
    elif fit:
        fix = f"micro-batch {fit} fits"
    else:
        fix = f"even micro-batch 1 needs about {fmt_bytes(need(1))}"
    gc = cfg.grad_checkpoint if grad_checkpoint is None else grad_checkpoint
    if not gc:
        ckpt = largest_fitting(lambda m: need(m, grad_checkpoint=True), free, micro_batch)
        if ckpt > fit:
            fix += f"; with --grad-checkpoint micro-batch {ckpt} fits"
    if label == "fp32" and device.type != "mps":
        fix += "; bf16 (--precision bf16) saves about 40 % of the activations"
    return check_fits(share * est.total, device, what=what, detail=detail, fix=fix, free=free)


def check_sampling_memory(
    cfg: ModelConfig,
    batch: int,
    *,
    precision: str,
    device: torch.device | str,
    guidance: bool = True,
    processes_on_host: int = 1,
    free: int | None = None,
    task: str = "sampling",
    batch_flag: str | None = "--batch-size",
) -> str | None:
    """Refuse sampling (or a forward benchmark: ``guidance=False``) of ``batch`` images at once whose estimated
    peak does not fit; None, or a warning to print. Call it before the weights are loaded (they are part of the
    estimate); ``precision="auto"`` checks the lower, half-precision estimate. ``task`` names the work in the
    message, ``batch_flag`` the flag that sets the batch (None: the message says the number only)."""
    device = torch.device(device)
    label, precision = _estimated_in(precision)
    share = _processes_sharing(device, processes_on_host)
    kw = dict(precision=precision, guidance=guidance, device_kind=device.type)
    need = share * estimate_sampling_memory(cfg, batch, **kw)
    free = device_free_memory(device) if free is None else free
    if free is None:
        return None
    rows = f"{2 * batch} network rows with guidance" if guidance else f"{batch} network rows"
    what = f"{cfg.name} {task} {batch} images at once ({rows}, {label}" + _sharing(share)
    fix = ""
    if need > free:
        fit = largest_fitting(lambda b: share * estimate_sampling_memory(cfg, b, **kw), free, batch - 1)
        fix = f"{batch_flag or 'a batch of'} {fit} fits" if fit else "even one image at a time does not fit"
    return check_fits(need, device, what=what, fix=fix, free=free)


def check_run(
    cfg: RunConfig, plan: BatchPlan, precision: str, device: torch.device, world_size: int, *, main: bool
) -> str | None:
    """The check of a ``jitkit train`` run (rank 0 decides for all, :func:`agreed`): run before the precision
    is resolved (``precision="auto"``: refuses only what fits in no precision, before the precision probe
    allocates) and again after. Returns the note to print: a near-full warning once the precision is known,
    or the refusal overridden by ``JITKIT_MEMORY_CHECK=off``."""
    note = agreed(
        lambda free: check_training_memory(
            cfg.model,
            plan.micro_batch,
            precision=precision,
            device=device,
            world_size=world_size,
            processes_on_host=dist.local_world_size(),
            fsdp=cfg.train.fsdp,
            evaluation=True,  # the end of every run samples from a replica of the EMA weights
            effective_batch=plan.effective_batch,
            free=free,
        ),
        device,
        main=main,
    )
    return note if precision != "auto" or not memory_check_enabled() else None
