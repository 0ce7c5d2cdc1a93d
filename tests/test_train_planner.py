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
from jitkit.train.planner import (
    ASSUMED_BF16,
    HOST_PROC_CPU,
    HOST_PROC_GPU,
    GiB,
    ParamCounts,
    activation_profile,
    auto_batch,
    checkpoint_host_bytes,
    estimate_memory,
    make_plan,
    param_counts,
    parse_bytes,
)


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
    sharded = estimate_memory(cfg, 8, world_size=4, fsdp=True)
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


# -- the terms of the estimate, by hand on a small config -------------------------------------------------------

# the tiny model of conftest (TINY_MODEL): 8 px, patch 4 (G = 2, N = 4), D = 32, depth 2, 2 heads (h = 16), bottleneck 8, 2
# in-context tokens from block 1, 3 classes; SwiGLU hidden int(int(32·4)·2/3) = 85
SMALL = dict(
    name="tiny", img_size=8, patch_size=4, hidden_size=32, depth=2, num_heads=2, bottleneck_dim=8,
    in_context_len=2, in_context_start=1, num_classes=3,
)  # fmt: skip
# one block: norm1 32 + qkv 32·96+96 = 3,168 + q/k norms 16+16 + proj 32·32+32 = 1,056 + norm2 32
#            + w12 32·170+170 = 5,610 + w3 85·32+32 = 2,752 + adaLN 32·192+192 = 6,336           = 19,018
# of which Linear weights and biases (what autocast casts): 3,168 + 1,056 + 5,610 + 2,752 + 6,336 = 18,922
P_BLOCK, CAST_BLOCK = 19_018, 18_922
# outside the blocks: patch conv 3·8·4·4 = 384 (no bias), 1×1 conv 8·32+32 = 288, t MLP 256·32+32 = 8,224 and
# 32·32+32 = 1,056, class table 4·32 = 128, pos_embed 4·32 = 128 (not trained), in-context 2·32 = 64,
# final norm 32, final linear 32·48+48 = 1,584, final adaLN 32·64+64 = 2,112                       = 14,000
P_ROOT, CAST_ROOT = 14_000, 384 + 288 + 8_224 + 1_056 + 1_584 + 2_112
P, P_T = P_ROOT + 2 * P_BLOCK, P_ROOT + 2 * P_BLOCK - 128


def small_cfg(**kw):
    from jitkit.config import ModelConfig

    return ModelConfig(**{**SMALL, **kw})


def test_param_counts_by_hand():
    assert param_counts(small_cfg()) == ParamCounts(
        total=P, trainable=P_T, block=P_BLOCK, root=P_ROOT, cast=CAST_ROOT + 2 * CAST_BLOCK
    )
    assert P == 52_036 == sum(p.numel() for p in build_model(small_cfg(), device="meta").parameters())


def test_fsdp_adds_what_it_does_not_shard():
    """FSDP2 over 4 ranks: the state divides by 4; the root's and two blocks' whole parameters (4 bytes in
    fp32, 2 under bf16's MixedPrecisionPolicy) and one block's whole float32 gradient do not."""
    cfg = small_cfg()
    one = estimate_memory(cfg, 2)
    fp32 = estimate_memory(cfg, 2, world_size=4, fsdp=True)
    assert (fp32.weights, fp32.grads, fp32.optimizer, fp32.ema) == (
        4 * P // 4,
        4 * P_T // 4,
        8 * P_T // 4,
        8 * P // 4,
    )
    assert fp32.gathered == 4 * (P_ROOT + 2 * P_BLOCK) + 4 * P_BLOCK
    assert fp32.total == fp32.state + one.activations + one.workspace + fp32.gathered
    bf16 = estimate_memory(cfg, 2, world_size=4, fsdp=True, precision="bf16")
    assert bf16.gathered == 2 * (P_ROOT + 2 * P_BLOCK) + 4 * P_BLOCK
    assert bf16.autocast == 0 and bf16.buckets == 0  # the gathered weights are half already; no DDP
    alone = estimate_memory(cfg, 2, world_size=1, fsdp=True)  # one process is never sharded
    assert alone.gathered == 0 and alone.state == one.state


def test_ddp_buckets_and_autocast_weight_copies():
    cfg = small_cfg()
    one = estimate_memory(cfg, 2)
    ddp = estimate_memory(cfg, 2, world_size=2)
    assert one.buckets == 0 and ddp.buckets == 4 * P_T  # a float32 copy of the gradients
    assert ddp.total == one.total + 4 * P_T
    assert ddp.autocast == 0  # fp32: nothing is cast
    half = estimate_memory(cfg, 2, world_size=2, precision="bf16")
    assert half.autocast == 2 * (CAST_ROOT + 2 * CAST_BLOCK)
    assert half.total == half.state + half.activations + half.workspace + 4 * P_T + half.autocast


def test_evaluation_replica_kept_or_only_during_the_evaluation():
    cfg = small_cfg()
    plain = estimate_memory(cfg, 1)
    kept = estimate_memory(cfg, 1, evaluation=True)
    assert kept.evaluation == 4 * P and kept.eval_kept
    assert kept.total == plain.total + 4 * P  # without FSDP it stays built: on top of the step
    fsdp = estimate_memory(cfg, 1, world_size=4, fsdp=True, evaluation=True)
    assert fsdp.evaluation == 8 * P and not fsdp.eval_kept  # the replica + the EMA gathered whole
    step = fsdp.state + fsdp.activations + fsdp.workspace + fsdp.gathered
    assert fsdp.step == step
    assert fsdp.total == max(step, fsdp.state + 8 * P)
    assert fsdp.total == fsdp.state + 8 * P  # this small model at micro-batch 1: the evaluation is the peak


def test_checkpoints_count_on_rank_zeros_host():
    cfg = small_cfg()
    assert checkpoint_host_bytes(cfg) == 12 * P  # model + two EMAs in float32
    assert checkpoint_host_bytes(cfg, fsdp=True) == 12 * P + 8 * P_T  # + the whole AdamW state
    # one CPU: no loader worker (one core stays with the loop), so the host is the process + the checkpoint
    p = make_plan(cfg, target_batch=4, device_kind="cpu", host_mem=8 * GiB, cpus=1)
    assert p.workers == 0 and p.checkpoint_host == 12 * P
    assert p.host_memory == HOST_PROC_CPU + p.memory.total + 12 * P
    g = make_plan(
        cfg, target_batch=8, device_kind="cuda", devices=2, device_mem=4 * GiB, host_mem=64 * GiB, cpus=2,
        fsdp=True,
    )  # fmt: skip
    assert g.workers == 0 and g.host_memory == 2 * HOST_PROC_GPU + 12 * P + 8 * P_T


def test_attention_is_traced_as_the_fused_kernel_runs_it():
    """The meta trace saves what a real CPU forward saves (SDPA runs its flash kernel there: q, k, v, out and
    the log-sum-exp, no [T, T] matrix), and a block's bytes grow linearly with the tokens."""
    import torch

    from jitkit.config import DiffusionConfig
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.jit import JiT

    cfg = small_cfg(img_size=16)
    torch.manual_seed(0)
    den = Denoiser(JiT(cfg), DiffusionConfig(), cfg.num_classes).train()
    params, seen, bases = {id(p) for p in den.parameters()}, set(), []

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in seen:
            seen.add(id(base))
            bases.append(base)  # kept alive, so ids are not reused
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        den.loss(torch.randn(2, 3, 16, 16), torch.tensor([0, 2]))
    real = sum(b.numel() * b.element_size() for b in bases) / 2
    assert activation_profile(cfg).total == real
    # with T = N tokens (no in-context tokens) a block saves a·T + b bytes: no T² term
    blk = [activation_profile(small_cfg(img_size=s, in_context_len=0)).per_block[0] for s in (8, 16, 24)]
    assert (blk[2] - blk[1]) / (36 - 16) == pytest.approx((blk[1] - blk[0]) / (16 - 4), rel=1e-9)
    math = [activation_profile(small_cfg(img_size=s, in_context_len=0, attention="math-fp32")).per_block[0]
            for s in (8, 16, 24)]  # fmt: skip
    # the reference's attention keeps one [H, T, T] float32 matrix per image, 2·4·T² bytes: the slopes differ
    # by 8·((36 + 16) − (16 + 4)) = 256
    assert (math[2] - math[1]) / 20 - (math[1] - math[0]) / 12 == pytest.approx(8 * 32, rel=1e-9)


def test_auto_precision_follows_the_runtime():
    cfg = small_cfg()
    kw = dict(target_batch=4, devices=1, device_mem=8 * GiB, host_mem=16 * GiB, cpus=4)
    assumed = make_plan(cfg, device_kind="cuda", **kw)
    assert assumed.precision == "bf16" and assumed.notes == [ASSUMED_BF16]
    assert "note: precision auto: assumed a GPU with native bf16" in assumed.render()
    t4 = make_plan(cfg, device_kind="cuda", bf16_native=False, **kw)
    assert t4.precision == "fp16" and t4.notes == []
    assert make_plan(cfg, device_kind="cuda", bf16_native=True, **kw).notes == []
    assert make_plan(cfg, device_kind="mps", **kw).precision == "fp32"
    assert make_plan(cfg, device_kind="cpu", **kw).precision == "fp32"
    slow = make_plan(cfg, device_kind="cuda", bf16_native=False, precision="bf16", **kw)
    assert slow.precision == "bf16" and any("emulated" in w for w in slow.warnings)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, found 'fp8'"):
        make_plan(cfg, device_kind="cuda", precision="fp8", **kw)


def test_host_memory_and_workers_count_the_processes_on_one_host():
    """2 nodes × 8 GPUs with 64 CPUs each: 7 workers per process (64 // 8 − 1), not 3 (64 // 16 − 1), and the
    host holds 8 processes; rank 0's host also takes the checkpoints."""
    cfg = small_cfg()
    kw = dict(
        target_batch=256, device_kind="cuda", devices=16, device_mem=16 * GiB, host_mem=512 * GiB, cpus=64
    )
    two = make_plan(cfg, devices_per_host=8, **kw)
    one = make_plan(cfg, **kw)
    assert (two.workers, one.workers) == (7, 3)
    assert two.nodes == 2 and one.nodes == 1
    worker = 512 * 2**20 + 2 * 2 * two.micro_batch * 3 * 8 * 8
    assert two.host_memory == 8 * (HOST_PROC_GPU + 7 * worker) + 12 * P
    assert "2 hosts × 8 × CUDA" in two.render() and "on rank 0's host" in two.render()
    cpu = make_plan(
        cfg, target_batch=8, device_kind="cpu", devices=4, devices_per_host=2, host_mem=8 * GiB, cpus=4
    )
    assert cpu.memory.total <= 0.9 * 4 * GiB - HOST_PROC_CPU  # CPU training: one host's memory over its 2
    with pytest.raises(ValueError, match=r"devices_per_host must lie in \[1, devices=16\], found 32"):
        make_plan(cfg, devices_per_host=32, **kw)


def test_auto_batch_counts_this_hosts_processes(tmp_path, tiny, monkeypatch):
    cfg = tiny.run_config(tmp_path, batch_size=4, accum_steps=1, device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # two nodes of one process each
    _, plan = auto_batch(cfg, world_size=2)
    assert (plan.devices, plan.devices_per_host) == (2, 1)
    _, plan = auto_batch(cfg, world_size=2, local_world_size=2)
    assert plan.devices_per_host == 2


def test_cli_plan_takes_hosts_and_compute_capability(capsys):
    from jitkit.cli import main

    hw = ["plan", "--gpus", "16", "--gpu-mem", "24GiB", "--host-mem", "256GiB", "--cpus", "64", "--json"]
    assert main([*hw, "--gpus-per-node", "8", "--compute-capability", "7.5"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["precision"], plan["devices_per_host"], plan["nodes"], plan["workers"]) == ("fp16", 8, 2, 7)
    assert plan["notes"] == []
    assert main([*hw, "--compute-capability", "8.6"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["precision"], plan["devices_per_host"], plan["workers"]) == ("bf16", 16, 3)
    assert main([*hw, "--gpus-per-node", "32"]) == 2
    assert "--gpus-per-node must lie in [1, --gpus 16], found 32" in capsys.readouterr().err
    assert main([*hw, "--compute-capability", "ampere"]) == 2
    assert "--compute-capability: expected a version such as 8.0" in capsys.readouterr().err
