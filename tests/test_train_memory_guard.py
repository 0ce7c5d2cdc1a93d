"""The memory checks: free memory (host, cgroup), the refusal and what it suggests, the sampling estimate against
a measured peak, and the refusals of ``jitkit train``, ``jitkit sample`` and ``jitkit bench`` before any work."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from jitkit.cli import main
from jitkit.config import model_config
from jitkit.runtime import memory as memory_mod
from jitkit.runtime.memory import InsufficientMemory, _cgroup_remaining, check_fits
from jitkit.train.memory_guard import (
    _divisors,
    agreed,
    check_sampling_memory,
    check_training_memory,
    largest_fitting,
)
from jitkit.train.peak_memory import estimate_memory, estimate_sampling_memory

GiB = 1 << 30
CPU = torch.device("cpu")


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


# -- free memory ----------------------------------------------------------------------------------------------


def test_a_cgroup_limit_lowers_the_free_memory(tmp_path):
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert _cgroup_remaining(tmp_path) == 600000
    (tmp_path / "memory.max").write_text("max\n")  # v2 without a limit
    assert _cgroup_remaining(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(1 << 62))  # v1 writes a huge number for none
    (v1 / "memory" / "memory.usage_in_bytes").write_text("5")
    assert _cgroup_remaining(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("105")
    assert _cgroup_remaining(v1) == 100


def test_host_free_memory_is_the_smaller_of_meminfo_and_the_cgroup(monkeypatch):
    monkeypatch.setattr(memory_mod, "_cgroup_remaining", lambda: 1 << 20)
    assert memory_mod.host_available_memory() == 1 << 20
    monkeypatch.setattr(memory_mod, "_cgroup_remaining", lambda: None)
    free = memory_mod.host_available_memory()
    assert free is not None and free > 1 << 20  # this machine's MemAvailable


# -- the refusal ----------------------------------------------------------------------------------------------


def test_check_fits_refuses_warns_or_passes(monkeypatch):
    monkeypatch.delenv(memory_mod.MEMORY_CHECK_ENV, raising=False)
    with pytest.raises(
        InsufficientMemory, match=r"run X needs about 3\.00 GiB \(a, b\), more than the 2\.00 GiB"
    ):
        check_fits(3 * GiB, CPU, what="run X", detail="a, b", fix="use less", free=2 * GiB)
    with pytest.raises(ValueError, match="use less"):  # an input error: the CLI exits 2 with it
        check_fits(3 * GiB, CPU, what="run X", fix="use less", free=2 * GiB)
    assert "90%" in check_fits(int(1.8 * GiB), CPU, what="run X", free=2 * GiB)
    assert check_fits(GiB, CPU, what="run X", free=2 * GiB) is None
    monkeypatch.setenv(memory_mod.MEMORY_CHECK_ENV, "off")
    assert "running anyway" in check_fits(3 * GiB, CPU, what="run X", free=2 * GiB)


def test_largest_fitting_finds_the_boundary():
    assert largest_fitting(lambda n: 10 * n, 95, 1000) == 9
    assert largest_fitting(lambda n: 10 * n, 5, 1000) == 0
    assert largest_fitting(lambda n: 10 * n, 10**9, 7) == 7
    assert _divisors(12) == [1, 2, 3, 4, 6, 12] and _divisors(97) == [1, 97]
    assert len(_divisors(10**12)) == 169  # from the square root: a huge global batch is no slow search


def test_training_refusal_suggests_a_micro_batch_that_keeps_the_effective_batch():
    cfg = model_config("JiT-B/16")
    free = 20 * GiB
    with pytest.raises(InsufficientMemory) as e:
        check_training_memory(cfg, 128, precision="fp32", device=CPU, free=free, effective_batch=256)
    msg = str(e.value)
    fit = int(msg.split("micro-batch ")[2].split(" fits")[0])
    assert 256 % fit == 0 and fit < 128
    assert estimate_memory(cfg, fit).total <= free
    bigger = [d for d in range(fit + 1, 128) if 256 % d == 0]
    assert all(estimate_memory(cfg, d).total > free for d in bigger)
    assert f"--batch-size {fit} --global-batch 256" in msg
    assert "--grad-checkpoint" in msg and "--precision bf16" in msg
    # precision auto is checked with the lower (bf16) estimate: what bf16 fits is not refused
    est_bf16 = estimate_memory(cfg, 48, precision="bf16").total
    est_fp32 = estimate_memory(cfg, 48, precision="fp32").total
    between = (est_bf16 + est_fp32) // 2
    check_training_memory(cfg, 48, precision="auto", device=CPU, free=between)  # no refusal
    with pytest.raises(InsufficientMemory):
        check_training_memory(cfg, 48, precision="fp32", device=CPU, free=between)


def test_processes_of_one_host_share_its_memory_but_not_a_gpus():
    cfg = model_config("JiT-S/4")
    one = estimate_memory(cfg, 64, device_kind="cpu").total
    free = int(1.5 * one)
    assert check_training_memory(cfg, 64, precision="fp32", device=CPU, free=free) is None
    with pytest.raises(InsufficientMemory, match="2 processes on this host"):
        check_training_memory(cfg, 64, precision="fp32", device=CPU, free=free, processes_on_host=2)
    gpu_one = estimate_memory(cfg, 64, device_kind="cuda").total
    cuda = torch.device("cuda", 0)
    assert (
        check_training_memory(cfg, 64, precision="fp32", device=cuda, free=2 * gpu_one, processes_on_host=2)
        is None
    )


def test_sampling_refusal_names_the_batch_that_fits():
    cfg = model_config("JiT-B/16")
    free = 8 * GiB
    with pytest.raises(InsufficientMemory, match="1024 network rows with guidance") as e:
        check_sampling_memory(cfg, 512, precision="fp32", device=CPU, free=free)
    fit = int(str(e.value).split("--batch-size ")[1].split(" fits")[0])
    assert estimate_sampling_memory(cfg, fit) <= free < estimate_sampling_memory(cfg, fit + 1)
    # without guidance half the rows: a larger batch fits
    assert (
        check_sampling_memory(cfg, fit + 1, precision="fp32", device=CPU, free=free, guidance=False) is None
    )


def test_agreed_gives_the_checks_verdict_with_the_measured_free_memory(monkeypatch):
    monkeypatch.setattr(memory_mod, "host_available_memory", lambda: 12345)
    seen = []
    assert agreed(lambda free: seen.append(free) or "note", CPU) == "note"
    assert seen == [12345]
    with pytest.raises(InsufficientMemory, match="no room"):
        agreed(lambda free: (_ for _ in ()).throw(InsufficientMemory("no room")), CPU)


# -- the sampling estimate against a measured peak ---------------------------------------------------------

_MEASURE = textwrap.dedent(
    """
    import gc, json, sys, torch
    from jitkit.config import model_config
    from jitkit.models.jit import JiT
    from jitkit.runtime import retain_freed_memory
    from jitkit.train.peak_memory import _read_hwm, _reset_hwm
    retain_freed_memory()  # the policy of every jitkit command
    torch.set_num_threads(1)
    cfg = model_config("JiT-S/4", img_size=32, num_classes=16)
    tiny = JiT(cfg.replace(depth=1, hidden_size=16, num_heads=1, bottleneck_dim=4, in_context_len=0,
                           in_context_start=0, img_size=cfg.patch_size)).eval()
    with torch.no_grad():
        tiny(torch.zeros(1, 3, 4, 4), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    del tiny; gc.collect()
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * 4096
    _reset_hwm()
    net = JiT(cfg).eval()
    B = int(sys.argv[1])
    with torch.no_grad():
        net(torch.randn(B, 3, 32, 32), torch.rand(B), torch.zeros(B, dtype=torch.long))
    print(json.dumps({"growth": _read_hwm() - base}))
    """
)


@pytest.mark.env_sensitive  # RSS of a real process: needs a host that is not swapping
def test_sampling_estimate_bounds_a_measured_forward_peak():
    """One eager no-grad forward of 1,024 rows in a fresh process (as sampling runs one batch): its RSS growth
    is covered by the estimate without guidance, and the estimate is not more than twice it."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, "1024"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["growth"]
    cfg = model_config("JiT-S/4", img_size=32, num_classes=16)
    est = estimate_sampling_memory(cfg, 1024, guidance=False)
    assert measured <= est <= 2 * measured, (est / 2**20, measured / 2**20)


# -- the commands refuse before any work -------------------------------------------------------------------


def _little_memory(monkeypatch, free: int = 64 << 20) -> None:
    monkeypatch.delenv(memory_mod.MEMORY_CHECK_ENV, raising=False)
    monkeypatch.setattr(memory_mod, "host_available_memory", lambda: free)


def test_train_refuses_a_micro_batch_that_does_not_fit_before_a_run_folder(monkeypatch, tmp_path):
    _little_memory(monkeypatch)
    out = tmp_path / "run"
    rc, _, err = _run("train", "--out", str(out), "--max-steps", "1", "--batch-size", "4096", "--no-progress")
    assert rc == 2
    assert "JiT-T/4 training at micro-batch 4096" in err and "free on this host" in err
    assert "--batch-size" in err and "--global-batch 4096" in err
    assert not out.exists()  # nothing was written


def test_train_runs_with_the_check_off(monkeypatch, tmp_path):
    _little_memory(monkeypatch, free=1 << 20)
    monkeypatch.setenv(memory_mod.MEMORY_CHECK_ENV, "off")
    out = tmp_path / "run"
    flags = ["--max-steps", "1", "--batch-size", "8", "--precision", "fp32", "--threads", "1", "--no-eval"]
    rc, stdout, err = _run("train", "--out", str(out), *flags, "--no-progress")
    assert rc == 0, err
    assert "[jitkit] memory:" in stdout and "running anyway" in stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny) -> Path:
    from jitkit.train import train

    return train(tiny.run_config(tmp_path_factory.mktemp("run") / "r", epochs=1), progress=False)


def test_sample_refuses_a_batch_that_does_not_fit_before_reading_weights(monkeypatch, tmp_path, tiny_run):
    _little_memory(monkeypatch, free=1 << 20)
    out = tmp_path / "samples"
    rc, _, err = _run("sample", str(tiny_run), "--out", str(out), "--num", "64", "--batch-size", "64")
    assert rc == 2
    assert "sampling 64 images at once" in err and "free on this host" in err
    assert not out.exists()


def test_sweep_refuses_a_batch_that_does_not_fit(monkeypatch, tmp_path, tiny_run):
    _little_memory(monkeypatch, free=259 << 20)  # the fixed part of a sampling process and a few images
    out = tmp_path / "sweep"
    rc, _, err = _run(
        "sweep", str(tiny_run), "--out", str(out), "--cfgs", "1.5,2", "--sample-batch-size", "48"
    )
    assert rc == 2
    assert "sampling 48 images at once (96 network rows with guidance" in err and "--sample-batch-size" in err
    assert not out.exists()


def test_bench_refuses_a_batch_that_does_not_fit(monkeypatch):
    _little_memory(monkeypatch, free=1 << 30)
    rc, _, err = _run(
        "bench", "--model", "JiT-B/16", "--batch-size", "512", "--mode", "forward", "--repeats", "1"
    )
    assert rc == 2
    assert "JiT-B/16 forward passes of 512 images at once" in err and "--batch-size" in err


_LOW_MEMORY_ON_RANK0 = textwrap.dedent(
    """
    import sys
    from jitkit.cli import main
    from jitkit.runtime import dist
    import jitkit.runtime.memory as memory
    low = dist.env_world()[0] == 0  # rank 0 measures little free memory, rank 1 plenty
    memory.host_available_memory = (lambda: 1 << 20) if low else (lambda: 1 << 40)
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_sampling_refusal_on_rank_0_stops_every_rank(tmp_path, tiny_run):
    """`jitkit sample` under torchrun: rank 0 decides the memory check for all ranks, so both exit 2 with the
    refusal and no rank starts writing its share."""
    from conftest import run_ranks

    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "samples"
    argv = ["sample", str(tiny_run), "--out", str(out), "--num", "64", "--batch-size", "32", "--no-progress"]
    results = run_ranks(lambda r: [sys.executable, "-c", _LOW_MEMORY_ON_RANK0, *argv], 2, logs, timeout=120)
    for rc, _, err in results:
        assert rc == 2, err[-2000:]
        assert "sampling 32 images at once" in err and "2 processes on this host" in err
    assert not out.exists()
