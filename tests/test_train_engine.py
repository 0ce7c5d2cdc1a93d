"""The training engine end to end on a tiny JiT: outputs, resume equivalence, accumulation, DDP and FSDP
(2 gloo processes), non-finite loss, callbacks, compile, and previews equal to ``jitkit sample``."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from jitkit.checkpoint import load_checkpoint
from jitkit.config import DiffusionConfig
from jitkit.diffusion.flow import Denoiser, flow_loss, interpolate
from jitkit.train import NonFiniteLossError, StopTraining, train
from jitkit.train.engine import accumulate_gradients
from jitkit.train.run_folder import read_log


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl")]


def test_run_folder_and_resume_equivalence(tmp_path, tiny):
    cfg = tiny.run_config(tmp_path / "a")
    run_a = train(cfg, progress=False)
    for name in ("config.json", "classes.json", "log.jsonl", "loss.png"):
        assert (run_a / name).is_file(), name
    assert (run_a / "samples" / "step-000012.png").is_file()
    assert json.loads((run_a / "config.json").read_text()) == cfg.to_dict()
    ck = load_checkpoint(run_a)
    assert ck.step == 12 and ck.state["step"] == 12 and len(ck.classes) == 16
    assert [r["step"] for r in read_log(run_a / "log.jsonl")] == list(range(1, 13))

    def stop_at_5(event, info):
        if event == "step" and info["step"] == 5:
            raise StopTraining("test")

    cfg_b = tiny.run_config(tmp_path / "b")
    run_b = train(cfg_b, callbacks=[stop_at_5], progress=False)
    assert load_checkpoint(run_b).step == 5
    assert len(losses(run_b)) == 5
    train(cfg_b, resume="auto", progress=False)
    la, lb = losses(run_a), losses(run_b)
    assert len(lb) == 12
    assert max(abs(x - y) for x, y in zip(la, lb)) <= 1e-6
    ca, cb = load_checkpoint(run_a), load_checkpoint(run_b)
    for k in ca.model:
        torch.testing.assert_close(ca.model[k], cb.model[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(ca.ema1[k], cb.ema1[k], rtol=0, atol=1e-6)


def test_callback_contract(tmp_path, tiny):
    """Events step / epoch_end / end with the documented info; the denoiser is built only when read."""
    seen: list[tuple[str, dict]] = []

    def record(event, info):
        keys = {"step", "epoch", "run_dir", "config", "classes", "device"}
        assert keys <= set(info) and "denoiser" in info
        row = {k: info[k] for k in ("step", "epoch")}
        if event == "step":
            row |= {"loss": info["loss"], "lr": info["lr"]}
        if event == "end":
            den = info["denoiser"]
            assert isinstance(den, Denoiser) and not den.training and info.get("denoiser") is den
        seen.append((event, row))

    cfg = tiny.run_config(tmp_path / "cb", epochs=2)  # 4 steps per epoch
    run = train(cfg, callbacks=[record], progress=False)
    events = [e for e, _ in seen]
    assert events == ["step"] * 4 + ["epoch_end"] + ["step"] * 4 + ["epoch_end", "end"]
    assert [r["step"] for e, r in seen if e == "step"] == list(range(1, 9))
    assert [r["epoch"] for e, r in seen if e != "step"] == [0, 1, 2]
    logged = read_log(run / "log.jsonl")
    assert [r["loss"] for e, r in seen if e == "step"] == [r["loss"] for r in logged]
    assert [r["lr"] for e, r in seen if e == "step"] == [r["lr"] for r in logged]


def test_training_preview_equals_jitkit_sample(tmp_path, tiny):
    """The end-of-run grid is what ``jitkit sample RUN --per-class 8 --seed <train.seed>`` draws."""
    from jitkit.cli import main

    run = train(tiny.run_config(tmp_path / "run", epochs=1, seed=5), progress=False)
    preview = run / "samples" / "step-000004.png"
    grid = tmp_path / "sample.png"
    argv = ["sample", str(run), "--per-class", "8", "--seed", "5", "--grid", str(grid), "--no-progress"]
    assert main([*argv, "--batch-size", "16", "--device", "cpu"]) == 0
    assert preview.is_file() and grid.read_bytes() == preview.read_bytes()
    other = tmp_path / "seed0.png"
    assert main([*argv[:5], "0", "--grid", str(other), "--no-progress", "--device", "cpu"]) == 0
    assert other.read_bytes() != preview.read_bytes()  # the seed matters: the equality is not vacuous


class _FixedNoiseDenoiser(Denoiser):
    """The JiT objective with per-image noise that is a fixed function of the image (no RNG)."""

    def loss(self, x, y, generator=None, reduce=True):
        t = torch.sigmoid(x.flatten(1).sum(1))
        e = torch.sin(7.0 * x + 1.0)
        z = interpolate(x, e, t)
        return flow_loss(self.net(z, t, y), x, e, z, t, "x", "v", self.cfg.t_eps, reduce=reduce)


def test_accumulation_equals_one_larger_batch(tiny):
    from jitkit.models.registry import build_model

    torch.manual_seed(0)
    net = build_model(tiny.model_config(**tiny.RUN_MODEL))
    with torch.no_grad():  # non-zero output layer so every parameter gets a gradient
        net.final_layer.linear.weight.normal_(0, 0.1)
        for b in net.blocks:
            b.adaLN_modulation[-1].weight.normal_(0, 0.1)
    den = _FixedNoiseDenoiser(net, DiffusionConfig(label_drop_prob=0.0), 16)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    y = torch.arange(8)
    cpu = torch.device("cpu")
    big = accumulate_gradients(den, [(x, y, None, None)], device=cpu)
    g_big = {n: p.grad.clone() for n, p in den.named_parameters() if p.grad is not None}
    den.zero_grad(set_to_none=True)
    parts = [(x[i : i + 2], y[i : i + 2], None, None) for i in range(0, 8, 2)]
    small = accumulate_gradients(den, parts, device=cpu)
    torch.testing.assert_close(small, big, rtol=1e-6, atol=1e-7)
    assert len(g_big) > 10
    for n, p in den.named_parameters():
        if n in g_big:
            torch.testing.assert_close(p.grad, g_big[n], rtol=1e-4, atol=1e-7)


_WORKER = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from jitkit.config import resolve_run_config
    from jitkit.train import train
    cfg = resolve_run_config(json.loads(sys.argv[1]))
    train(cfg, progress=False, run_dir=sys.argv[2], resume="auto" if len(sys.argv) > 3 else None)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(d: dict, out: Path, resume: bool = False) -> str:
    """Two gloo processes (like torchrun --nproc_per_node=2) training ``d``; rank 0's stdout."""
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, json.dumps(d), str(out), *(["resume"] if resume else [])],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    return outs[0][0]


def test_two_process_ddp_matches_single_process(tmp_path, tiny):
    """World 2 × micro 4 (gloo, like torchrun) equals world 1 × micro 4 × accumulation 2."""
    d = tiny.run_dict(tmp_path / "ddp", accum_steps=1, epochs=2)
    stdout = _run_two_ranks(d, tmp_path / "ddp")
    assert "world size 2" in stdout and "micro 4 × accum 1 × world 2" in stdout
    single = train(tiny.run_config(tmp_path / "one", accum_steps=2, epochs=2), progress=False)
    l_ddp, l_one = losses(tmp_path / "ddp"), losses(single)
    assert len(l_ddp) == len(l_one) == 8
    torch.testing.assert_close(torch.tensor(l_ddp), torch.tensor(l_one), rtol=1e-4, atol=1e-5)
    # only rank 0 wrote: one run folder, weights equal to the single-process run's
    a, b = load_checkpoint(tmp_path / "ddp"), load_checkpoint(single)
    for k in a.model:
        torch.testing.assert_close(a.model[k], b.model[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_two_process_fsdp_matches_single_process_and_resumes(tmp_path, tiny):
    """FSDP2 (fully_shard, gloo): same losses as one process; a resumed sharded run continues the log."""
    d = tiny.run_dict(tmp_path / "fsdp", accum_steps=1, epochs=1, fsdp=True)
    _run_two_ranks(d, tmp_path / "fsdp")
    d["train"]["epochs"] = 2
    _run_two_ranks(d, tmp_path / "fsdp", resume=True)
    single = train(tiny.run_config(tmp_path / "one", accum_steps=2, epochs=2), progress=False)
    l_fsdp, l_one = losses(tmp_path / "fsdp"), losses(single)
    assert len(l_fsdp) == len(l_one) == 8
    torch.testing.assert_close(torch.tensor(l_fsdp), torch.tensor(l_one), rtol=1e-4, atol=1e-5)
    a, b = load_checkpoint(tmp_path / "fsdp"), load_checkpoint(single)
    assert a.step == 8
    for k in a.model:
        torch.testing.assert_close(a.model[k], b.model[k], rtol=1e-3, atol=1e-5)


def test_non_finite_loss_stops_naming_the_step(tmp_path, monkeypatch, tiny):
    calls = {"n": 0}
    orig = Denoiser.loss

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = orig(self, *a, **k)
        return out * float("nan") if calls["n"] == 7 else out  # micro-step 7 = step 4 (accum 2)

    monkeypatch.setattr(Denoiser, "loss", poisoned)
    cfg = tiny.run_config(tmp_path / "nan", ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match="at step 4") as ei:
        train(cfg, progress=False)
    msg = str(ei.value)
    assert "Last good checkpoint" in msg and "train.blr" in msg and "resume='auto'" in msg and "--" not in msg
    ck = load_checkpoint(tmp_path / "nan")
    assert ck.step == 2 and all(torch.isfinite(v).all() for v in ck.model.values())


@pytest.mark.env_sensitive  # whether inductor finds a C++ compiler
def test_compile_without_a_compiler_trains_eagerly(tmp_path, monkeypatch, capsys, tiny):
    """--compile where inductor has no compiler: a message, then the eager run (same losses as compile off)."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    run_c = train(tiny.run_config(tmp_path / "c", compile=True, epochs=1, eval_at_end=False), progress=False)
    assert "compile=True ignored: no C++ compiler" in capsys.readouterr().out
    run_e = train(tiny.run_config(tmp_path / "e", epochs=1, eval_at_end=False), progress=False)
    assert losses(run_c) == losses(run_e) and len(losses(run_c)) > 0
    blocks = load_checkpoint(run_c).model
    assert all(not k.startswith("_orig_mod") and "._orig_mod." not in k for k in blocks)


@pytest.mark.slow  # inductor builds the blocks' and the AdamW + EMA kernels: ~30-60 s on 2 cores
@pytest.mark.env_sensitive
def test_compiled_training_updates_adamw_and_emas_in_one_pass(tmp_path, monkeypatch, tiny):
    """With a compiler, --compile trains with AdamWEMA (no separate ema.update) and matches the eager run:
    the same losses and EMA weights up to float rounding of the compiled kernels."""
    from jitkit.models.registry import compiler_available
    from jitkit.train.ema import EMA
    from jitkit.train.optim import AdamWEMA

    ok, why = compiler_available("cpu")
    if not ok:
        pytest.skip(f"torch.compile needs a C++ compiler here: {why}")
    calls = {"fused": 0, "ema.update": 0}
    fused_step, ema_update = AdamWEMA.step, EMA.update

    def count_fused(self, *a, **k):
        calls["fused"] += 1
        return fused_step(self, *a, **k)

    def count_update(self, *a, **k):
        calls["ema.update"] += 1
        return ema_update(self, *a, **k)

    monkeypatch.setattr(AdamWEMA, "step", count_fused)
    monkeypatch.setattr(EMA, "update", count_update)
    cfg_c = tiny.run_config(tmp_path / "c", compile=True, epochs=2, eval_at_end=False)
    run_c = train(cfg_c, progress=False)
    steps = load_checkpoint(run_c).step
    assert steps > 0 and calls == {"fused": steps, "ema.update": 0}
    run_e = train(tiny.run_config(tmp_path / "e", epochs=2, eval_at_end=False), progress=False)
    assert calls["ema.update"] == steps  # the eager run keeps the separate EMA update
    torch.testing.assert_close(torch.tensor(losses(run_c)), torch.tensor(losses(run_e)), rtol=1e-4, atol=1e-6)
    ck_c, ck_e = load_checkpoint(run_c), load_checkpoint(run_e)
    for which in ("ema1", "ema2"):
        a, b = getattr(ck_c, which), getattr(ck_e, which)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{which} {k}")


@pytest.mark.slow  # two compiled runs: ~60 s on 2 cores
@pytest.mark.env_sensitive
def test_resume_across_optimizer_implementations(tmp_path, tiny):
    """A compiled run (AdamWEMA) resumes eagerly (torch's fused AdamW) and an eager run resumes compiled: both
    continue the uninterrupted eager losses, with the optimiser's step counters where the resumed optimiser
    keeps them (on a GPU a misplaced counter fails the fused kernel's first step)."""
    from jitkit.models.registry import compiler_available

    ok, why = compiler_available("cpu")
    if not ok:
        pytest.skip(f"torch.compile needs a C++ compiler here: {why}")
    ref = train(tiny.run_config(tmp_path / "ref", epochs=2, eval_at_end=False), progress=False)
    for first, then in ((True, False), (False, True)):
        out = tmp_path / f"c{int(first)}{int(then)}"
        train(tiny.run_config(out, compile=first, epochs=1, eval_at_end=False), progress=False)
        run = train(
            tiny.run_config(out, compile=then, epochs=2, eval_at_end=False), resume="auto", progress=False
        )
        torch.testing.assert_close(torch.tensor(losses(run)), torch.tensor(losses(ref)), rtol=1e-4, atol=1e-6)
        st = load_checkpoint(run).state["optimizer"]["state"]
        assert all(s["step"].device.type == "cpu" and s["step"].dtype == torch.float32 for s in st.values())


def test_bf16_training_keeps_float32_islands_and_auto_is_recorded(tmp_path, tiny, monkeypatch):
    """Under bf16 autocast the master weights, both EMAs, the AdamW moments and the loss stay float32; an
    ``auto`` run records what it chose (here the CPU probe says bf16 pays off) and a resumed run keeps it even
    when the probe would now decide otherwise (a run does not change precision half-way)."""
    import jitkit.models.registry as R

    run = train(
        tiny.run_config(tmp_path / "b", precision="bf16", epochs=1, eval_at_end=False), progress=False
    )
    ck = load_checkpoint(run)
    for sd in (ck.model, ck.ema1, ck.ema2):
        assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    moments = [t for st in ck.state["optimizer"]["state"].values() for k, t in st.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert ck.meta["precision"] == "bf16" and all(math.isfinite(x) for x in losses(run))

    monkeypatch.setattr(R, "bf16_block_speedup", lambda *a, **k: {"peak_speedup": 7.0, "speedup": 3.0})
    run_a = train(
        tiny.run_config(tmp_path / "a", precision="auto", epochs=1, eval_at_end=False), progress=False
    )
    meta = load_checkpoint(run_a).meta
    assert meta["precision"] == "bf16" and meta["precision_choice"]["reason"] == "measured"
    monkeypatch.setattr(R, "bf16_block_speedup", lambda *a, **k: {"peak_speedup": 1.0, "speedup": 0.5})
    cfg = tiny.run_config(tmp_path / "a", precision="auto", epochs=2, eval_at_end=False)
    train(cfg, resume="auto", progress=False)
    ck = load_checkpoint(run_a)
    assert ck.step == 8 and ck.meta["precision"] == "bf16"
    assert ck.meta["precision_choice"]["reason"] == "the resumed run's"


def test_compile_scope_model_compiles_the_whole_forward(tmp_path, monkeypatch, tiny):
    """train.compile_scope=model asks the JiT for one graph of the whole forward (compile_blocks(whole=True));
    the default compiles per block. The compile itself is replaced (what it does is tested in test_models_jit)."""
    import jitkit.models.registry as R
    from jitkit.config import ConfigError
    from jitkit.models.jit import JiT

    calls = []
    monkeypatch.setattr(R, "compiler_available", lambda device: (True, ""))
    monkeypatch.setattr(
        JiT, "compile_blocks", lambda self, freeze=False, whole=False: calls.append(whole) or self
    )
    from jitkit.train.engine import Trainer

    setup = Trainer._setup_optimizer  # torch's fused AdamW: no compiled AdamW + EMA kernel to build here
    monkeypatch.setattr(Trainer, "_setup_optimizer", lambda self, fuse_ema: setup(self, False))
    for scope in ("model", "blocks"):
        cfg = tiny.run_config(
            tmp_path / scope, compile=True, compile_scope=scope, max_steps=1, eval_at_end=False
        )
        train(cfg, progress=False)
    assert calls == [True, False]
    with pytest.raises(ConfigError, match="compile_scope must be one of blocks|model"):
        tiny.run_config(tmp_path / "bad", compile_scope="layers")
