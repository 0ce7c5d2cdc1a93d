"""Free memory of the host and of a device, and the one check that refuses a run whose estimated peak does not fit.

Why: on a CPU an allocation beyond the free memory is not an error but the kernel's OOM killer, which on a
shared 24 GB host may take another process first (the reference's workers did exactly that). Training,
sampling and the benchmarks therefore compare their estimated peak (``jitkit.train.peak_memory``) with what is
free *before* the first large allocation, and stop with the estimate, what is free and what would fit.

Free memory: on the host ``MemAvailable`` of /proc/meminfo, lowered to the cgroup's remaining limit
(cgroup v2 ``memory.max − memory.current``, v1 ``memory.limit_in_bytes − memory.usage_in_bytes``) inside a
container that has one; on a CUDA device ``torch.cuda.mem_get_info``; on MPS (unified memory) the host's.

``JITKIT_MEMORY_CHECK=off`` (or ``0``/``false``/``no``) turns the refusal into a warning, for when the estimate
is known to be pessimistic for a setup (how close the estimates come to measured peaks: docs/train.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = [
    "MEMORY_CHECK_ENV",
    "InsufficientMemory",
    "check_fits",
    "device_free_memory",
    "fmt_bytes",
    "host_available_memory",
    "memory_check_enabled",
]

MEMORY_CHECK_ENV = "JITKIT_MEMORY_CHECK"
WARN_FRACTION = 0.85  # an estimate above this share of the free memory is said (it may still fit)
_NO_LIMIT = 1 << 60  # cgroup v1 writes a huge number for "no limit"


class InsufficientMemory(ValueError):
    """The estimated peak of a run exceeds the free memory of the device (an input error: exit code 2)."""


def fmt_bytes(n: float) -> str:
    """1.23 GiB or 456.7 MiB."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2 without a limit) → None


def _cgroup_remaining(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes the process's cgroup may still allocate, or None where it has no limit (or none is readable)."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),  # v2 (the process's own group is mounted at the root in containers)
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),  # v1
    ):
        limit = _read_int(root / limit_file)
        usage = _read_int(root / usage_file)
        if limit is not None and usage is not None and limit < _NO_LIMIT:
            return max(0, limit - usage)
    return None


def host_available_memory() -> int | None:
    """Free host memory in bytes: MemAvailable (else the free pages), within the cgroup's limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            avail = None
    cg = _cgroup_remaining()
    if cg is not None:
        avail = cg if avail is None else min(avail, cg)
    return avail


def device_free_memory(device: torch.device | str) -> int | None:
    """Free bytes where ``device``'s tensors live: the host for CPU and MPS, the GPU's free memory for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):  # no driver in this process (a CPU-only build)
            return None
    if device.type in ("cpu", "mps"):
        return host_available_memory()
    return None


def memory_check_enabled() -> bool:
    """False when ``JITKIT_MEMORY_CHECK`` is off/0/false/no (refusals become warnings)."""
    return os.environ.get(MEMORY_CHECK_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def check_fits(
    need: int,
    device: torch.device | str,
    *,
    what: str,
    detail: str = "",
    fix: str = "",
    free: int | None = None,
) -> str | None:
    """Refuse (:class:`InsufficientMemory`) a run whose estimated peak ``need`` (bytes, everything that shares
    the memory: e.g. all the processes of one host) exceeds the free memory of ``device`` (``free``: measured
    if not given); None if it fits with room, a warning text if it takes more than 85 % of what is free, and a
    warning text instead of the refusal when ``JITKIT_MEMORY_CHECK=off``. ``what`` names the run (``JiT-B/16
    training at micro-batch 128, fp32``), ``detail`` the estimate's terms, ``fix`` what to change."""
    if need < 0:
        raise ValueError(f"need must be a byte count >= 0, found {need}")
    free = device_free_memory(device) if free is None else free
    if free is None:
        return None
    where = "this host" if torch.device(device).type in ("cpu", "mps") else str(device)
    said = f"{what} needs about {fmt_bytes(need)}" + (f" ({detail})" if detail else "")
    if need > free:
        text = f"{said}, more than the {fmt_bytes(free)} free on {where}" + (f"; {fix}" if fix else "")
        if memory_check_enabled():
            raise InsufficientMemory(
                f"{text}. ({MEMORY_CHECK_ENV}=off runs it anyway, at the risk of the out-of-memory killer.)"
            )
        return f"{text} ({MEMORY_CHECK_ENV}=off: running anyway)"
    if need > WARN_FRACTION * free:
        return f"{said}, {need / free:.0%} of the {fmt_bytes(free)} free on {where}: it may not fit"
    return None
