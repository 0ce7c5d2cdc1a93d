"""Process-wide settings of a jitkit job: how the C library's allocator treats memory the job frees."""

from __future__ import annotations

import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's own values of the two
ENV = "JITKIT_MALLOC"  # "retain" (the default) or "default" (leave the C library's allocator as it is)
_child_hook = False  # whether forked children are set back to glibc's values (registered once)


def _mallopt(mmap_max: int, trim_threshold: int) -> bool:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    return libc.mallopt(_M_MMAP_MAX, mmap_max) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1


def _glibc_values_in_child() -> None:
    try:
        _mallopt(_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def retain_freed_memory() -> str:
    """Keep memory that the process frees instead of handing it back to the kernel (glibc only; else a no-op).

    glibc maps large blocks fresh and trims the heap on free, so a buffer allocated again after a free pays
    page faults on every use: a JiT-B/16 bf16 sampling run on a CPU took 13,600–190,000 minor faults per run
    and 5 % longer (6.76 / 6.83 s against 6.42 / 6.51 s with this, Intel Xeon, 2 threads), and a benchmark's
    GEMM probe after a training phase was slowed the same way. The commands that compute (train, sample,
    eval, ref-stats, sweep, invert, experiment, demo, bench: ``jitkit.cli``) call this first; the process then keeps its peak memory
    until it ends instead of returning it between steps. Forked children (data-loader workers, which decode
    images of every size and would fragment a heap that is never trimmed) get glibc's values back.
    ``JITKIT_MALLOC=default`` leaves the allocator alone. Returns what was done.
    """
    global _child_hook
    setting = os.environ.get(ENV, "retain").strip().lower() or "retain"
    if setting not in ("retain", "default"):
        raise ValueError(f"{ENV} must be retain or default, found {setting!r}")
    if setting == "default" or not sys.platform.startswith("linux"):
        return "default"
    try:
        ok = _mallopt(0, 2**31 - 1)
    except (OSError, AttributeError):
        return "default"
    if ok and not _child_hook:
        os.register_at_fork(after_in_child=_glibc_values_in_child)
        _child_hook = True
    return "retain (glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)" if ok else "default"
