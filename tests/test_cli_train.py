"""``jitkit train`` and ``jitkit plan`` (cli/train.py, cli/plan.py): config layers, resume, bad input."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from jitkit.cli import build_parser, main
from jitkit.cli.train import build_config
from jitkit.train import train


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_cli_bad_inputs(tmp_path, tiny):
    rc, _, err = _run("train", "--preset", "imagenet-b16", "--dry-run")
    assert rc == 2 and "unknown preset" in err and "imagenet256-b16" in err and "shapes" in err
    rc, _, err = _run("train", "--set", "train.blrr=1", "--dry-run")
    assert rc == 2 and "did you mean 'blr'" in err and "train.blr" in err
    rc, _, err = _run("train", "epochs", "--dry-run")
    assert rc == 2 and "KEY=VALUE" in err
    # effective batch not divisible: explained, not crashed
    cfg = tiny.run_config(tmp_path / "x", batch_size=3, accum_steps=1, global_batch=8)
    with pytest.raises(ValueError, match="not divisible by micro-batch 3"):
        train(cfg, progress=False)
    # resume with a different model on the command line: refused, both configs side by side
    run_dir = train(tiny.run_config(tmp_path / "r", epochs=1), progress=False)
    rc, _, err = _run("train", "--resume", str(run_dir), "--set", "model.depth=3", "--dry-run")
    assert rc == 2 and err.startswith(f"jitkit train: error: --resume {run_dir}/checkpoints/last: ")
    assert "differs from the checkpoint" in err
    assert "depth" in err and "checkpoint" in err and "requested" in err and "<-- differs" in err
    # a file where a run folder is expected, and a path that does not exist: named with the flag
    rc, _, err = _run("train", "--resume", str(run_dir / "config.json"), "--dry-run")
    assert rc == 2 and f"--resume {run_dir / 'config.json'}: " in err and "expected a run folder" in err
    rc, _, err = _run("train", "--resume", str(tmp_path / "nope"), "--dry-run")
    assert rc == 2 and f"--resume {tmp_path / 'nope'}: " in err and "does not exist" in err
    # the checkpoint's config wins; explicit non-model changes are applied and reported
    args = build_parser().parse_args(["train", "--resume", str(run_dir), "--epochs", "5"])
    cfg2, resume, notes = build_config(args)
    assert (
        resume == str(run_dir / "checkpoints" / "last") and cfg2.model.depth == 2 and cfg2.train.epochs == 5
    )
    assert any("train.epochs: 1 -> 5" in n for n in notes)


def test_cli_resume_auto_finds_the_run_or_starts_fresh(tmp_path, tiny):
    args = build_parser().parse_args(["train", "--resume", "auto", "--out", str(tmp_path / "none")])
    cfg, resume, notes = build_config(args)
    assert resume is None and cfg.train.out == str(tmp_path / "none")
    assert notes == [
        f"--resume auto: no run with a checkpoint under {tmp_path / 'none'}; starting a fresh run"
    ]
    run_dir = train(tiny.run_config(tmp_path / "r", epochs=1), progress=False)
    args = build_parser().parse_args(["train", "--resume", "auto", "--out", str(tmp_path / "r")])
    cfg, resume, notes = build_config(args)
    assert resume == str(run_dir / "checkpoints" / "last") and cfg.model.depth == 2 and notes == []


def test_cli_config_layers_and_auto_batch(tmp_path, capsys):
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


def test_cli_plan_for_given_hardware():
    flags = ["plan", "--gpus", "2", "--gpu-mem", "12GiB", "--host-mem", "24GiB", "--cpus", "8"]
    rc, out, _ = _run(*flags)
    assert rc == 0 and out.startswith("plan for JiT-B/16 at 256px on 2 × CUDA with 12.00 GiB")
    rc, out, _ = _run(*flags, "--json")
    plan = json.loads(out)
    assert rc == 0 and plan["micro_batch"] * plan["accum_steps"] * 2 == plan["effective_batch"] == 256
    rc, _, err = _run("plan", "--gpus", "2")
    assert rc == 2 and "--gpu-mem" in err
    rc, out, _ = _run("plan", "--gpus", "1", "--gpu-mem", "2GiB", "--host-mem", "8GiB", "--cpus", "4")
    assert rc == 1 and "does not fit" in out
