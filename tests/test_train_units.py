"""EMA arithmetic, LR schedule values, batch planning and the hardware planner (incl. a measured peak)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from jitkit.config import TrainConfig, model_config
from jitkit.train.ema import EMA
from jitkit.train.engine import batch_plan, chunk_seed, epoch_permutation, param_groups, rank_chunk_indices
from jitkit.train.planner import GiB, estimate_memory, make_plan, parse_bytes
from jitkit.train.schedule import lr_at, scaled_lr

# -- EMA ---------------------------------------------------------------------------------------------------


def test_ema_two_decays_follow_the_recurrence():
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    m.register_parameter("frozen", nn.Parameter(torch.ones(2), requires_grad=False))
    ema = EMA(m, (0.9, 0.5))
    ref = {d: {n: p.detach().clone().double() for n, p in m.named_parameters()} for d in (0.9, 0.5)}
    for _ in range(5):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        ema.update(m)
        for d in (0.9, 0.5):
            for n, p in m.named_parameters():
                if p.requires_grad:
                    ref[d][n] = d * ref[d][n] + (1 - d) * p.detach().double()
                else:
                    ref[d][n] = p.detach().double()
    for which, d in ((1, 0.9), (2, 0.5)):
        got = ema.averaged(which)
        for n in ref[d]:
            torch.testing.assert_close(got[n].double(), ref[d][n], rtol=1e-6, atol=1e-6)
    # decay 0.5 has moved further toward the current weights than decay 0.9
    w = m.weight.detach()
    assert (ema.averaged(2)["weight"] - w).abs().sum() < (ema.averaged(1)["weight"] - w).abs().sum()


def test_ema_copy_to_and_state_round_trip():
    m = nn.Linear(4, 4)
    ema = EMA(m, (0.99, 0.9))
    with torch.no_grad():
        m.weight.mul_(3)
    ema.update(m)
    other = nn.Linear(4, 4)
    ema.copy_to(other, 2)
    assert torch.equal(other.weight, ema.averaged(2)["weight"])
    e2 = EMA(nn.Linear(4, 4), (0.99, 0.9))
    e2.load_state_dict(ema.state_dict())
    assert torch.equal(e2.averaged(1)["weight"], ema.averaged(1)["weight"])
    assert e2.num_updates == 1
    sd = ema.averaged_state_dict(m, 1)
    assert set(sd) == set(m.state_dict()) and torch.equal(sd["bias"], ema.averaged(1)["bias"])
    with pytest.raises(ValueError, match="decays must lie in"):
        EMA(m, (1.0, 0.5))


# -- LR -------------------------------------------------------------------------------------------------------


def test_lr_scaling_rule_and_schedule_values():
    assert scaled_lr(5e-5, 1024) == pytest.approx(2e-4)
    assert scaled_lr(5e-4, 128) == pytest.approx(2.5e-4)
    kw = dict(warmup_epochs=5, epochs=25)
    assert lr_at(0.0, 1.0, **kw) == 0.0
    assert lr_at(2.5, 1.0, **kw) == pytest.approx(0.5)  # linear warm-up, fractional epoch
    assert lr_at(5.0, 1.0, **kw) == 1.0
    assert lr_at(20.0, 1.0, **kw) == 1.0  # constant
    cos = dict(kw, schedule="cosine", min_lr=0.1)
    assert lr_at(5.0, 1.0, **cos) == pytest.approx(1.0)
    assert lr_at(15.0, 1.0, **cos) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_at(25.0, 1.0, **cos) == pytest.approx(0.1)
    assert lr_at(30.0, 1.0, **cos) == pytest.approx(0.1)
    assert lr_at(3.0, 2.0, warmup_epochs=0, epochs=10) == 2.0
    with pytest.raises(ValueError, match="constant' or 'cosine"):
        lr_at(6.0, 1.0, warmup_epochs=5, epochs=10, schedule="step")


# -- batches --------------------------------------------------------------------------------------------------


def test_batch_plan_derives_accumulation_and_explains_non_divisible():
    p = batch_plan(TrainConfig(batch_size=32, global_batch=1024), world_size=2)
    assert (p.micro_batch, p.accum_steps, p.effective_batch) == (32, 16, 1024)
    p = batch_plan(TrainConfig(batch_size=8, accum_steps=3), world_size=2)
    assert p.effective_batch == 48
    with pytest.raises(ValueError) as ei:
        batch_plan(TrainConfig(batch_size=48, global_batch=1000), world_size=2)
    msg = str(ei.value)
    assert "1000" in msg and "48" in msg and "96" in msg and "960" in msg and "1056" in msg
    with pytest.raises(ValueError, match="contradicts"):
        batch_plan(TrainConfig(batch_size=8, accum_steps=3, global_batch=64), world_size=1)


def test_data_order_and_rank_chunks():
    p0 = epoch_permutation(100, seed=1, epoch=0)
    assert torch.equal(p0, epoch_permutation(100, seed=1, epoch=0))
    assert not torch.equal(p0, epoch_permutation(100, seed=1, epoch=1))
    assert sorted(p0.tolist()) == list(range(100))
    # two ranks × 2 accumulation steps cover each step's global batch exactly once, in chunk order
    plan = batch_plan(TrainConfig(batch_size=4, accum_steps=2), world_size=2)
    seen = {}
    for r in range(2):
        for s, c, idx in rank_chunk_indices(p0, plan, r, 0, 3):
            seen[(s, c)] = idx.tolist()
    for s in range(3):
        glob = sum((seen[(s, c)] for c in range(4)), [])
        assert glob == p0[s * 16 : (s + 1) * 16].tolist()
    assert len({chunk_seed(0, s, c) for s in range(50) for c in range(8)}) == 400


def test_weight_decay_groups_skip_biases_and_vectors():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    assert len(param_groups(m, 0.0)) == 1
    decay, no_decay = param_groups(m, 0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


# -- planner --------------------------------------------------------------------------------------------------


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
    n = sum(
        p.numel()
        for p in __import__("jitkit.models", fromlist=["x"]).build_model(cfg, device="meta").parameters()
    )
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


_MEASURE = textwrap.dedent(
    """
    import json, sys
    from jitkit.config import model_config
    from jitkit.train.planner import measure_peak_cpu
    cfg = model_config("JiT-S/4", img_size=32, num_classes=16, grad_checkpoint=sys.argv[1] == "1")
    print(json.dumps(measure_peak_cpu(cfg, 24)))
    """
)


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


def test_ema_warmup_decay():
    m = nn.Linear(2, 2)
    ema = EMA(m, (0.999, 0.5), warmup=True)
    assert ema.current_decays() == pytest.approx((0.1, 0.1))  # (1 + 0)/(10 + 0)
    w0 = ema.averaged(1)["weight"].clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.averaged(1)["weight"], 0.1 * w0 + 0.9 * m.weight.detach())
    ema.num_updates = 10_000
    assert ema.current_decays() == pytest.approx((0.999, 0.5))
    assert EMA(m, (0.999, 0.5)).current_decays() == (0.999, 0.5)
