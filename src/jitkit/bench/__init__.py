"""Benchmarks: measured throughput, peak memory, analytic FLOPs and MFU (``jitkit bench``)."""

from jitkit.bench.flops import flops_per_image, forward_macs
from jitkit.bench.runner import BenchSettings, run_bench, run_config

__all__ = ["BenchSettings", "flops_per_image", "forward_macs", "run_bench", "run_config"]
