"""What the benchmark runs on: device names, the measured dense GEMM peak, peak memory.

Peak memory:
* CUDA: ``torch.cuda.max_memory_allocated`` growth over the baseline (peak stats reset at the baseline).
* MPS: the largest ``torch.mps.driver_allocated_memory`` seen after each step, minus the baseline (MPS has
  no peak counter; this is a lower bound of the true peak).
* CPU: peak resident set size growth: ``VmHWM`` from ``/proc/self/status`` after the steps minus ``VmRSS``
  at the baseline, with the high-water mark reset at the baseline through ``/proc/self/clear_refs`` where
  the kernel allows it. Memory freed earlier in the process can be reused without raising the RSS, so
  ``jitkit bench`` measures every configuration after the first in a fresh process. Without ``/proc``
  (macOS) the process-lifetime ``ru_maxrss`` is used, which is only right in a fresh process.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable

import torch

from jitkit.models.linear import onednn_available, onednn_product
from jitkit.runtime import synchronize


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_name()


def _gemm_timer(
    device: torch.device, dtype: torch.dtype, n: int | None
) -> tuple[Callable[[], None], float, int, str]:
    """``(run, work, n, backend)``: ``run()`` computes one ``n×n @ n×n`` product (synchronised) after one
    warm-up call; ``work`` = 2·n³ FLOPs. n defaults to 2048 on CPUs and 8192 on GPUs.

    On a CPU in float32 the product runs on the faster of torch's two GEMMs, ``torch.mm`` (MKL) and oneDNN
    (the kernel of :mod:`jitkit.models.linear`; which one wins depends on the CPU, see
    ``benchmarks/README.md``), so that an MFU against it is against the best dense float32 product this
    process can run.
    """
    if n is None:
        n = 2048 if device.type == "cpu" else 8192
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def run_mm() -> None:
        torch.mm(a, b, out=c)
        synchronize(device)

    runs = {"torch.mm": run_mm}
    if device.type == "cpu" and dtype == torch.float32 and onednn_available():
        bt = b.t()  # the [n,n] "weight" of x·wᵀ

        def run_onednn() -> None:
            onednn_product(a, bt)

        runs["onednn"] = run_onednn
    best_name, best_t = "torch.mm", float("inf")
    for name, run in runs.items():
        run()  # warm-up (thread pool, kernel selection)
        t0 = time.perf_counter()
        run()
        t = time.perf_counter() - t0
        if t < best_t:
            best_name, best_t = name, t
    return runs[best_name], 2.0 * n**3, n, best_name


def gemm_peak(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    seconds: float = 2.0,
    clock: str = "wall",
) -> dict[str, float]:
    """Measured dense GEMM throughput: repeated ``n×n @ n×n`` products for about ``seconds``.

    Returns ``{"flops": best FLOP/s, "median_flops": median FLOP/s, "n": n, "backend": the GEMM timed}`` where one product is 2·n³
    FLOPs. The best call is the peak (so an MFU against it is a lower bound of the true utilisation).
    ``clock="cpu"`` times with process CPU time (see ``BenchSettings.clock``).
    """
    run, work, n, backend = _gemm_timer(device, dtype, n)
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = now()
        run()
        times.append(now() - t0)
    times.sort()
    return {
        "flops": work / times[0],
        "median_flops": work / times[len(times) // 2],
        "n": float(n),
        "backend": backend,
    }


def gemm_probe(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, calls: int = 2
) -> Callable[[], float]:
    """A function that times ``calls`` ``n×n @ n×n`` products now and returns the best one's FLOP/s.

    Used between the timed repeats of a benchmark, so each repeat's MFU is taken against the GEMM speed of
    the same moment: on a shared or thermally throttled machine the matmul throughput drifts by tens of
    percent over minutes, and a peak measured once at the start would mis-state the utilisation.
    """
    run, work, _, _ = _gemm_timer(device, dtype, n)

    def probe() -> float:
        best = float("inf")
        for _ in range(calls):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        return work / best

    return probe


# --- memory -------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory growth of a device between ``start()`` and ``stop()`` in MiB (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = ""
        self._base = 0.0
        self._mps_peak = 0.0

    def start(self) -> None:
        d = self.device
        synchronize(d)
        if d.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d)
            self._base = torch.cuda.memory_allocated(d)
            self.kind = "cuda max_memory_allocated growth"
        elif d.type == "mps":
            self._base = float(torch.mps.driver_allocated_memory())
            self._mps_peak = self._base
            self.kind = "mps driver_allocated_memory growth (sampled after each step)"
        else:
            rss = _proc_status_kib("VmRSS")
            if rss is not None:
                self._base = rss * 1024.0
                try:
                    with open("/proc/self/clear_refs", "w") as f:
                        f.write("5")  # reset VmHWM to the current RSS
                    self.kind = "cpu peak RSS growth (VmHWM reset at baseline)"
                except OSError:
                    self.kind = "cpu peak RSS growth (VmHWM since process start)"
            else:
                self._base = _ru_maxrss_bytes()
                self.kind = "cpu ru_maxrss growth (fresh process)"

    def sample(self) -> None:
        """Call after each step (needed on MPS only)."""
        if self.device.type == "mps":
            self._mps_peak = max(self._mps_peak, float(torch.mps.driver_allocated_memory()))

    def stop(self) -> float:
        d = self.device
        synchronize(d)
        if d.type == "cuda":
            peak = float(torch.cuda.max_memory_allocated(d))
        elif d.type == "mps":
            self.sample()
            peak = self._mps_peak
        else:
            hwm = _proc_status_kib("VmHWM")
            peak = hwm * 1024.0 if hwm is not None else _ru_maxrss_bytes()
        return max(0.0, peak - self._base) / 2**20


def _ru_maxrss_bytes() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(r) if sys.platform == "darwin" else float(r) * 1024.0
