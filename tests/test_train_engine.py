"""The training engine end to end on a tiny JiT: outputs, resume equivalence, accumulation, DDP (2 gloo
processes), non-finite loss, SIGINT, and the CLI's bad-input handling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from jitkit.checkpoint import load_checkpoint
from jitkit.config import DiffusionConfig, merge_dicts, model_config, preset_dict, resolve_run_config
from jitkit.diffusion.flow import Denoiser, flow_loss, interpolate
from jitkit.models.registry import build_model
from jitkit.train import NonFiniteLossError, StopTraining, train
from jitkit.train.engine import accumulate_gradients, read_log

TINY_MODEL = {
    "name": "JiT-T/4",
    "img_size": 16,
    "num_classes": 16,
    "depth": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "bottleneck_dim": 8,
    "in_context_len": 2,
    "in_context_start": 1,
}


def tiny_dict(out: Path, **train_kw) -> dict:
    d = preset_dict("shapes")
    return merge_dicts(
        d,
        {
            "model": TINY_MODEL,
            "data": {"per_class": 2},
            "sampler": {"steps": 2},
            "train": {
                "out": str(out),
                "epochs": 3,
                "batch_size": 4,
                "accum_steps": 2,
                "blr": 1e-2,
                "warmup_epochs": 1.0,
                "log_every": 1,
                "ema_decay1": 0.9,
                "ema_decay2": 0.5,
                "threads": 1,
                **train_kw,
            },
        },
    )


def tiny_cfg(out: Path, **train_kw):
    return resolve_run_config(tiny_dict(out, **train_kw))


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl")]


def test_run_folder_and_resume_equivalence(tmp_path):
    cfg = tiny_cfg(tmp_path / "a")
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

    cfg_b = tiny_cfg(tmp_path / "b")
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


class _FixedNoiseDenoiser(Denoiser):
    """The JiT objective with per-image noise that is a fixed function of the image (no RNG)."""

    def loss(self, x, y, generator=None, reduce=True):
        t = torch.sigmoid(x.flatten(1).sum(1))
        e = torch.sin(7.0 * x + 1.0)
        z = interpolate(x, e, t)
        return flow_loss(self.net(z, t, y), x, e, z, t, "x", "v", self.cfg.t_eps, reduce=reduce)


def test_accumulation_equals_one_larger_batch():
    torch.manual_seed(0)
    cfg = model_config(**TINY_MODEL)
    net = build_model(cfg)
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


_DDP_WORKER = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from jitkit.config import resolve_run_config
    from jitkit.train import train
    cfg = resolve_run_config(json.loads(sys.argv[1]))
    train(cfg, progress=False, run_dir=sys.argv[2])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(d: dict, out: Path, resume: bool = False) -> str:
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    script = _DDP_WORKER.replace(
        "progress=False,", "progress=False, resume='auto' if len(sys.argv) > 3 else None,"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(d), str(out), *(["resume"] if resume else [])],
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


def test_two_process_ddp_matches_single_process(tmp_path):
    """World 2 × micro 4 (gloo, like torchrun) equals world 1 × micro 4 × accumulation 2."""
    d = tiny_dict(tmp_path / "ddp", accum_steps=1, epochs=2)
    stdout = _run_two_ranks(d, tmp_path / "ddp")
    assert "world size 2" in stdout and "micro 4 × accum 1 × world 2" in stdout
    single = train(tiny_cfg(tmp_path / "one", accum_steps=2, epochs=2), progress=False)
    l_ddp, l_one = losses(tmp_path / "ddp"), losses(single)
    assert len(l_ddp) == len(l_one) == 8
    torch.testing.assert_close(torch.tensor(l_ddp), torch.tensor(l_one), rtol=1e-4, atol=1e-5)
    # only rank 0 wrote: one run folder, weights equal to the single-process run's
    a, b = load_checkpoint(tmp_path / "ddp"), load_checkpoint(single)
    for k in a.model:
        torch.testing.assert_close(a.model[k], b.model[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_two_process_fsdp_matches_single_process_and_resumes(tmp_path):
    """FSDP2 (fully_shard, gloo): same losses as one process; a resumed sharded run continues the log."""
    d = tiny_dict(tmp_path / "fsdp", accum_steps=1, epochs=1, fsdp=True)
    _run_two_ranks(d, tmp_path / "fsdp")
    d["train"]["epochs"] = 2
    _run_two_ranks(d, tmp_path / "fsdp", resume=True)
    single = train(tiny_cfg(tmp_path / "one", accum_steps=2, epochs=2), progress=False)
    l_fsdp, l_one = losses(tmp_path / "fsdp"), losses(single)
    assert len(l_fsdp) == len(l_one) == 8
    torch.testing.assert_close(torch.tensor(l_fsdp), torch.tensor(l_one), rtol=1e-4, atol=1e-5)
    a, b = load_checkpoint(tmp_path / "fsdp"), load_checkpoint(single)
    assert a.step == 8
    for k in a.model:
        torch.testing.assert_close(a.model[k], b.model[k], rtol=1e-3, atol=1e-5)


def test_non_finite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    calls = {"n": 0}
    orig = Denoiser.loss

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = orig(self, *a, **k)
        return out * float("nan") if calls["n"] == 7 else out  # micro-step 7 = step 4 (accum 2)

    monkeypatch.setattr(Denoiser, "loss", poisoned)
    cfg = tiny_cfg(tmp_path / "nan", ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match="at step 4") as ei:
        train(cfg, progress=False)
    assert "Last good checkpoint" in str(ei.value)
    ck = load_checkpoint(tmp_path / "nan")
    assert ck.step == 2 and all(torch.isfinite(v).all() for v in ck.model.values())


def _cli(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "jitkit", *args], capture_output=True, text=True, env=env, timeout=300, **kw
    )


def _tiny_flags(out: Path) -> list[str]:
    sets = [f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "name"]
    return [
        "--model",
        "JiT-T/4",
        "--out",
        str(out),
        "--set",
        "data.per_class=2",
        "--set",
        "sampler.steps=2",
        "--batch-size",
        "4",
        "--no-eval",
        "--no-progress",
        "--threads",
        "1",
        *sets,
    ]


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "sig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jitkit", "train", *_tiny_flags(out), "--epochs", "1000", "--log-every", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(read_log(out / "log.jsonl")) < 2:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        o, e = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, e
    assert "interrupted by SIGINT" in o
    ck = load_checkpoint(out)
    assert ck.step >= 2 and ck.meta["reason"] == "interrupted"


def test_cli_bad_inputs(tmp_path):
    from jitkit.cli import main

    def run(*a):
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(list(a))
        return rc, err.getvalue()

    rc, err = run("train", "--preset", "imagenet-b16", "--dry-run")
    assert rc == 2 and "unknown preset" in err and "imagenet256-b16" in err and "shapes" in err
    rc, err = run("train", "--set", "train.blrr=1", "--dry-run")
    assert rc == 2 and "did you mean 'blr'" in err and "train.blr" in err
    rc, err = run("train", "epochs", "--dry-run")
    assert rc == 2 and "KEY=VALUE" in err
    # effective batch not divisible: explained, not crashed
    cfg = tiny_cfg(tmp_path / "x", batch_size=3, accum_steps=1, global_batch=8)
    with pytest.raises(ValueError, match="not divisible by micro-batch 3"):
        train(cfg, progress=False)
    # resume with a different model on the command line: refused, both configs side by side
    run_dir = train(tiny_cfg(tmp_path / "r", epochs=1), progress=False)
    rc, err = run("train", "--resume", str(run_dir), "--set", "model.depth=3", "--dry-run")
    assert rc == 2 and "differs from the checkpoint" in err
    assert "depth" in err and "checkpoint" in err and "command line" in err and "<-- differs" in err
    # a file where a run folder is expected
    rc, err = run("train", "--resume", str(run_dir / "config.json"), "--dry-run")
    assert rc == 2 and "expected a run folder" in err
    # the checkpoint's config wins; explicit non-model changes are applied and reported
    from jitkit.cli import build_parser
    from jitkit.cli.train import build_config

    args = build_parser().parse_args(["train", "--resume", str(run_dir), "--epochs", "5"])
    cfg2, resume, notes = build_config(args)
    assert resume is not None and cfg2.model.depth == 2 and cfg2.train.epochs == 5
    assert any("train.epochs: 1 -> 5" in n for n in notes)


def test_cli_config_layers_and_auto_batch(tmp_path, capsys):
    from jitkit.cli import build_parser, main
    from jitkit.cli.train import build_config

    y = tmp_path / "run.yaml"
    y.write_text("model:\n  depth: 3\ntrain:\n  epochs: 7\n  blr: 0.001\n")
    args = build_parser().parse_args(
        ["train", "--config", str(y), "--epochs", "9", "--set", "train.seed=4", "ema_decay1=0.99"]
    )
    cfg, resume, _ = build_config(args)
    # preset ← YAML ← command line
    assert resume is None and cfg.model.name == "JiT-T/4" and cfg.model.depth == 3
    assert (
        cfg.train.epochs == 9
        and cfg.train.blr == 0.001
        and cfg.train.seed == 4
        and cfg.train.ema_decay1 == 0.99
    )
    y.write_text("modle:\n  depth: 3\n")
    with pytest.raises(ValueError, match="unknown section 'modle'"):
        build_config(build_parser().parse_args(["train", "--config", str(y)]))
    rc = main(["train", "--batch-size", "auto", "--dry-run", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "--batch-size auto" in out and "effective batch   64" in out and "batch_size=64" in out


def test_compile_without_a_compiler_trains_eagerly(tmp_path, monkeypatch, capsys):
    """--compile where inductor has no compiler: a message, then the eager run (same losses as compile off)."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    run_c = train(tiny_cfg(tmp_path / "c", compile=True, epochs=1, eval_at_end=False), progress=False)
    assert "--compile ignored: no C++ compiler" in capsys.readouterr().out
    run_e = train(tiny_cfg(tmp_path / "e", epochs=1, eval_at_end=False), progress=False)
    assert losses(run_c) == losses(run_e) and len(losses(run_c)) > 0
    blocks = load_checkpoint(run_c).model
    assert all(not k.startswith("_orig_mod") and "._orig_mod." not in k for k in blocks)


@pytest.mark.slow  # inductor builds the blocks' and the AdamW + EMA kernels: ~30-60 s on 2 cores
def test_compiled_training_updates_adamw_and_emas_in_one_pass(tmp_path, monkeypatch):
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
    run_c = train(tiny_cfg(tmp_path / "c", compile=True, epochs=2, eval_at_end=False), progress=False)
    steps = load_checkpoint(run_c).step
    assert steps > 0 and calls == {"fused": steps, "ema.update": 0}
    run_e = train(tiny_cfg(tmp_path / "e", epochs=2, eval_at_end=False), progress=False)
    assert calls["ema.update"] == steps  # the eager run keeps the separate EMA update
    torch.testing.assert_close(torch.tensor(losses(run_c)), torch.tensor(losses(run_e)), rtol=1e-4, atol=1e-6)
    ck_c, ck_e = load_checkpoint(run_c), load_checkpoint(run_e)
    for which in ("ema1", "ema2"):
        a, b = getattr(ck_c, which), getattr(ck_e, which)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{which} {k}")
