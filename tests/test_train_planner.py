"""The hardware planner: byte sizes, the memory estimate (against a measured CPU peak), plans, auto batch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest

from jitkit.config import model_config
from jitkit.models import build_model
from jitkit.train.planner import GiB, auto_batch, estimate_memory, make_plan, parse_bytes


def test_parse_bytes():
    assert parse_bytes("12GiB") == 12 * GiB
    assert parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("1.5G") == int(1.5 * GiB)
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("twelve")


def test_memory_estimate_arithmetic():
    cfg = model_config("JiT-S/4", img_size=32, num_classes=16)
    e1 = estimate_memory(cfg, 1)
    e8 = estimate_memory(cfg, 8)
    n = sum(p.numel() for p in build_model(cfg, device="meta").parameters())
    assert e1.weights == 4 * n and e1.ema == 8 * n
    assert e8.state == e1.state  # optimizer state does not depend on the batch
    assert e8.activations == pytest.approx(8 * e1.activations, rel=1e-6)  # activations are linear in it
    gc = estimate_memory(cfg, 8, grad_checkpoint=True)
    assert gc.activations < 0.5 * e8.activations
    half = estimate_memory(cfg, 8, precision="bf16")
    assert half.activations < e8.activations
    sharded = estimate_memory(cfg, 8, shard_world=4)
    assert sharded.optimizer == e8.optimizer // 4


def test_plan_arithmetic_and_warnings():
    b16 = model_config("JiT-B/16")
    p = make_plan(
        b16, target_batch=1024, device_kind="cuda", devices=2, device_mem=12 * GiB, host_mem=24 * GiB, cpus=8
    )
    assert p.micro_batch * p.accum_steps * 2 == p.effective_batch == 1024
    assert p.memory.total <= 0.9 * 12 * GiB
    assert p.lr == pytest.approx(5e-5 * 1024 / 256)
    assert p.steps_per_epoch is None and p.fits
    assert 0 <= p.workers <= 3  # 8 CPUs over 2 processes, one core each for the training loop
    big = make_plan(
        b16, target_batch=1024, device_kind="cuda", devices=2, device_mem=24 * GiB, host_mem=24 * GiB, cpus=8
    )
    assert big.micro_batch >= p.micro_batch
    tiny = make_plan(
        b16, target_batch=64, device_kind="cuda", devices=1, device_mem=2 * GiB, host_mem=8 * GiB, cpus=4
    )
    assert not tiny.fits and any("does not fit" in w for w in tiny.warnings)
    shapes = make_plan(
        model_config("JiT-T/4", img_size=16, num_classes=16),
        target_batch=128,
        device_kind="cpu",
        host_mem=8 * GiB,
        cpus=2,
        dataset_size=3200,
    )
    assert (shapes.micro_batch, shapes.accum_steps, shapes.steps_per_epoch) == (128, 1, 25)
    assert "micro-batch 128" in shapes.render()


def test_auto_batch_applies_the_plan_to_the_config(tmp_path, tiny):
    cfg = tiny.run_config(tmp_path, batch_size=4, accum_steps=2, device="cpu")
    new, plan = auto_batch(cfg, world_size=1)
    assert plan.effective_batch == 8  # the target: batch_size × accum_steps × world size
    assert new.train.batch_size == plan.micro_batch and new.train.global_batch == 8
    assert new.train.accum_steps == 1 and new.model.grad_checkpoint == plan.grad_checkpoint
    assert new.train.epochs == cfg.train.epochs and new.model.depth == cfg.model.depth


_MEASURE = textwrap.dedent(
    """
    import json, sys
    from jitkit.config import model_config
    from jitkit.train.peak_memory import measure_peak_cpu
    cfg = model_config("JiT-S/4", img_size=32, num_classes=16, grad_checkpoint=sys.argv[1] == "1")
    print(json.dumps(measure_peak_cpu(cfg, 24)))
    """
)


@pytest.mark.env_sensitive  # RSS of a real process: needs a host that is not swapping
def test_memory_estimate_matches_measured_cpu_peak():
    """Peak RSS growth of real training steps, measured in fresh processes (without and with activation
    checkpointing, run side by side), within 25% of the planner's estimate."""
    procs = {
        gc: subprocess.Popen(
            [sys.executable, "-c", _MEASURE, "1" if gc else "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for gc in (False, True)
    }
    for gc, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        measured = json.loads(out.strip().splitlines()[-1])["growth"]
        est = estimate_memory(
            model_config("JiT-S/4", img_size=32, num_classes=16), 24, grad_checkpoint=gc
        ).total
        assert math.isclose(est, measured, rel_tol=0.25), (gc, est / 2**20, measured / 2**20)
