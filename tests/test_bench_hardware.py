"""jitkit.bench.hardware: peak memory, the GEMM peak, and keeping freed memory."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from jitkit.bench.hardware import gemm_peak, gemm_probe
from jitkit.runtime import retain_freed_memory

_PEAK_SCRIPT = """
import torch
from jitkit.bench.hardware import PeakMemory
mem = PeakMemory(torch.device("cpu"))
mem.start()
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
x.add_(1)
del x  # freed again: only the high-water mark remembers it
print(mem.stop(), mem.kind)
"""


@pytest.mark.env_sensitive  # the process RSS high-water mark
def test_cpu_peak_memory_sees_a_temporary_allocation():
    # in a fresh process: in this one an earlier test may have kept freed heap pages resident (the CLI's
    # retain_freed_memory), which a new allocation reuses without growing the RSS
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True)
    peak, kind = out.stdout.split(maxsplit=1)
    assert "cpu" in kind
    assert 60 <= float(peak) < 2000


def test_gemm_peak_and_probe_are_positive_rates():
    p = gemm_peak(torch.device("cpu"), n=128, seconds=0.05)
    assert p["flops"] >= p["median_flops"] > 0
    assert p["n"] == 128 and p["backend"] in ("torch.mm", "onednn")
    assert gemm_probe(torch.device("cpu"), torch.bfloat16, n=64)() > 0


_REFAULT = """
import resource, sys, torch
from jitkit.runtime import retain_freed_memory
if sys.argv[1] == "1":
    print(retain_freed_memory())
def faults():
    a = torch.empty(2048, 2048)  # 16 MiB (a GEMM probe's output): glibc maps or trims such a block on free
    a.fill_(1.0)
    del a
def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
big = torch.empty(64, 2**20)  # 256 MiB touched and freed first, as a training step's activations are
big.fill_(1.0)
del big
faults()
before = minflt()
faults()
print(minflt() - before)
"""


@pytest.mark.env_sensitive  # page faults
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_memory_is_not_faulted_in_again():
    # a re-allocated 16 MiB buffer costs ~4,000 page faults by default and almost none once freed memory is kept
    def run(flag: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", _REFAULT, flag], capture_output=True, text=True, check=True
        )
        return out.stdout.split()

    default = int(run("0")[-1])
    kept = run("1")
    assert kept[0] == "retain", kept
    assert default > 2000
    assert int(kept[-1]) < 1000


_FORKED = _REFAULT.replace(
    "big = torch.empty", "import os\nif os.fork() != 0:\n    os.wait()\n    sys.exit(0)\nbig = torch.empty"
)


@pytest.mark.env_sensitive  # page faults
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_forked_child_gets_the_c_librarys_own_allocator_back():
    # a data-loader worker: forked after the parent kept its freed memory, it returns memory as glibc does
    out = subprocess.run([sys.executable, "-c", _FORKED, "1"], capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    assert lines[0] == "retain", lines
    assert int(lines[-1]) > 2000  # the child's re-allocated buffer is faulted in again


def test_the_commands_that_compute_keep_freed_memory(monkeypatch, tmp_path):
    import jitkit.cli as cli
    import jitkit.runtime as runtime

    calls = []
    monkeypatch.setattr(runtime, "retain_freed_memory", lambda: calls.append(1) or "retain")
    assert cli.main(["models"]) == 0 and calls == []  # listing models computes nothing
    # a command that computes asks for it before its own work (here it then fails on a missing checkpoint)
    assert cli.main(["sample", str(tmp_path / "missing"), "--out", str(tmp_path / "o.png")]) == 2
    assert calls == [1]


def test_the_allocator_setting_can_be_left_alone(monkeypatch):
    monkeypatch.setenv("JITKIT_MALLOC", "default")
    assert retain_freed_memory() == "default"
    monkeypatch.setenv("JITKIT_MALLOC", "keep")
    with pytest.raises(ValueError, match="JITKIT_MALLOC must be retain or default, found 'keep'"):
        retain_freed_memory()
