"""Benchmarks: measured throughput, peak memory, analytic FLOPs and MFU (``jitkit bench``)."""

from jitkit.bench.flops import flops_per_image, forward_macs
from jitkit.bench.runner import run_bench, run_config
from jitkit.bench.settings import BenchSettings

__all__ = ["BenchSettings", "flops_per_image", "forward_macs", "run_bench", "run_config"]
