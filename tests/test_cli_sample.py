"""jitkit sample end to end on an imported run: defaults from the checkpoint, overrides, outputs, errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from jitkit.checkpoint.reference import import_reference
from jitkit.cli import main
from jitkit.eval.sample_folder import load_npz, read_sample_folder


@pytest.fixture(scope="module")
def run(shared_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    g = load_file(str(shared_dir / "golden" / "jit_small.safetensors"))
    state = {k[len("state.") :]: v for k, v in g.items() if k.startswith("state.")}
    args = argparse.Namespace(
        model="JiT-T/4",
        img_size=32,
        class_num=10,
        bottleneck_dim=16,
        num_sampling_steps=3,
        cfg=2.0,
        interval_min=0.1,
        interval_max=1.0,
        sampling_method="heun",
    )
    torch.save({"model": state, "model_ema1": state, "model_ema2": state, "args": args}, tmp / "c.pth")
    names = tmp / "names.txt"
    names.write_text("\n".join(f"class{i}" for i in range(10)))
    import_reference(tmp / "c.pth", tmp / "run", classes=names)
    return tmp


def test_sample_outputs_and_defaults(run, tmp_path, capsys):
    r = run / "run"
    out, npz, grid = tmp_path / "s", tmp_path / "s.npz", tmp_path / "g.png"
    rc = main(
        [
            "sample",
            str(r),
            "--classes",
            "0,class3",
            "--per-class",
            "2",
            "--out",
            str(out),
            "--npz",
            str(npz),
            "--grid",
            str(grid),
            "--device",
            "cpu",
            "--batch-size",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0
    meta = json.loads((out / "sample_meta.json").read_text())
    assert meta["sampler"]["steps"] == 3 and meta["sampler"]["cfg"] == 2.0 and meta["ema"] == "1"
    imgs, labels = read_sample_folder(out)
    assert labels.tolist() == [0, 0, 3, 3]
    a, ly, classes = load_npz(npz)
    assert np.array_equal(a, imgs) and ly.tolist() == [0, 0, 3, 3] and classes[3] == "class3"
    assert grid.is_file()
    err = capsys.readouterr().err
    assert "heun 3 steps" in err and "cfg 2.0" in err
    # overrides land in the request record; resuming the same folder with them is refused
    assert (
        main(
            [
                "sample",
                str(r),
                "--classes",
                "1",
                "--steps",
                "2",
                "--sampler",
                "euler",
                "--cfg",
                "1.5",
                "--interval",
                "0",
                "1",
                "--npz",
                str(tmp_path / "o.npz"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                str(r),
                "--classes",
                "0,class3",
                "--per-class",
                "2",
                "--out",
                str(out),
                "--steps",
                "2",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "different request" in capsys.readouterr().err


def test_sample_errors_explain(run, tmp_path, capsys):
    r = run / "run"
    assert main(["sample", str(r)]) == 2
    assert "choose an output" in capsys.readouterr().err
    # the reference's .pth file where a run folder is expected: say to import it
    assert main(["sample", str(run / "c.pth"), "--grid", str(tmp_path / "g.png")]) == 2
    assert "jitkit import" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--grid", str(tmp_path / "g.png")]) == 2
    assert "expected a run folder" in capsys.readouterr().err
    assert main(["sample", str(r), "--classes", "dog", "--grid", str(tmp_path / "g.png")]) == 2
    assert "neither a class index nor a class name" in capsys.readouterr().err
    assert main(["sample", str(r), "--classes", "12", "--grid", str(tmp_path / "g.png")]) == 2
    assert "[0, 9]" in capsys.readouterr().err
    assert main(["sample", str(r), "--grid", str(tmp_path / "g.jpg")]) == 2
    assert ".png" in capsys.readouterr().err


def test_file_or_folder_mixups_do_the_right_thing(run, tmp_path, capsys):
    r = run / "run"
    # a file inside a checkpoint folder is as good as the folder
    npz = tmp_path / "a.npz"
    assert (
        main(
            [
                "sample",
                str(r / "checkpoints" / "last" / "model.safetensors"),
                "--classes",
                "2",
                "--npz",
                str(npz),
                "--no-progress",
            ]
        )
        == 0
    )
    assert load_npz(npz)[1].tolist() == [2]
    # --out naming an existing file
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["sample", str(r), "--classes", "2", "--out", str(f), "--no-progress"]) == 2
    assert "expects a folder" in capsys.readouterr().err
    # importing into a non-empty folder, or from a jitkit run folder
    assert main(["import", str(run / "c.pth"), "--out", str(r)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["import", str(r), "--out", str(tmp_path / "new")]) == 2
    assert "needs no import" in capsys.readouterr().err


def test_weights_into_another_architecture_name_both_configs(run):
    from jitkit.checkpoint import load_denoiser
    from jitkit.config import model_config

    want = model_config("JiT-T/4", img_size=64, num_classes=10, bottleneck_dim=16)
    with pytest.raises(ValueError) as e:
        load_denoiser(run / "run", model_cfg=want)
    msg = str(e.value)
    assert "net.pos_embed" in msg and "[1, 64, 96]" in msg and "[1, 256, 96]" in msg
    assert "img_size" in msg and "32" in msg and "64" in msg


def test_a_folder_records_the_precision_that_ran(run, tmp_path, capsys):
    r, out = run / "run", tmp_path / "s"
    base = ["sample", str(r), "--classes", "1", "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(base) == 0  # --precision auto: fp32 on the CPU
    assert json.loads((out / "sample_meta.json").read_text())["precision"] == "fp32"
    capsys.readouterr()
    assert main([*base, "--precision", "fp32"]) == 0  # the same request under its explicit name
    assert "skipped 1 already written" in capsys.readouterr().err
    assert main([*base, "--precision", "bf16"]) == 2
    assert "precision: folder has 'fp32', now 'bf16'" in capsys.readouterr().err


def test_the_cli_offers_the_runtime_precisions():
    from jitkit.cli.sample import PRECISIONS
    from jitkit.runtime import PRECISIONS as RUNTIME_PRECISIONS

    assert PRECISIONS == tuple(RUNTIME_PRECISIONS)


# -- --compile -----------------------------------------------------------------------------------------------


def test_compile_auto_compiles_on_a_cpu_only_for_long_jobs(monkeypatch):
    from jitkit.cli.sample import COMPILE_AUTO_TFLOP, sample_compile
    from jitkit.config import SamplerConfig, model_config

    monkeypatch.setattr("jitkit.models.registry.compiler_available", lambda d: (True, "g++"))
    b16 = model_config("JiT-B/16")
    heun10 = SamplerConfig(method="heun", steps=10, cfg=2.9)
    # item 4's benchmark job: 4 images, 19 evaluations of 8 images at ~50 GFLOP each ≈ 7.7 TFLOP: eager
    on, why = sample_compile("auto", torch.device("cpu"), b16, heun10, 4)
    assert not on and "7.7 TFLOP" in why
    on, why = sample_compile("auto", torch.device("cpu"), b16, heun10, 1000)  # ≈ 1,900 TFLOP
    assert on and f">= {COMPILE_AUTO_TFLOP:.0f}" in why
    # without guidance half the work: 60 images at cfg 1 (≈ 57 TFLOP) stay eager, at cfg 2.9 (≈ 115) compile
    assert not sample_compile("auto", torch.device("cpu"), b16, heun10.replace(cfg=1.0), 60)[0]
    assert sample_compile("auto", torch.device("cpu"), b16, heun10, 60)[0]
    assert not sample_compile("auto", torch.device("cuda"), b16, heun10, 10**6)[0]  # GPUs: only when asked
    assert sample_compile("on", torch.device("cpu"), b16, heun10, 1) == (True, "compile on")
    assert sample_compile("off", torch.device("cpu"), b16, heun10, 10**6) == (False, "compile off")
    monkeypatch.setattr("jitkit.models.registry.compiler_available", lambda d: (False, "no C++ compiler"))
    on, why = sample_compile("auto", torch.device("cpu"), b16, heun10, 1000)
    assert not on and "no C++ compiler" in why
    with pytest.raises(ValueError, match="compile=on.*no C\\+\\+ compiler"):
        sample_compile("on", torch.device("cpu"), b16, heun10, 1)


def test_compile_on_without_a_compiler_is_a_clear_flag_error(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    rc = main(["sample", str(run / "run"), "--classes", "1", "--out", str(tmp_path / "s"), "--compile", "on"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--compile on" in err and "/nonexistent/c++" in err
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("*.png"))


@pytest.mark.slow  # inductor builds the blocks' kernels: ~20-40 s on 2 cores
@pytest.mark.env_sensitive  # needs a C++ compiler for inductor
def test_compiled_sampling_writes_the_eager_images(run, tmp_path, capsys):
    from jitkit.models.registry import compiler_available

    ok, why = compiler_available("cpu")
    if not ok:
        pytest.skip(f"torch.compile needs a C++ compiler here: {why}")
    base = ["sample", str(run / "run"), "--classes", "0,3", "--per-class", "2", "--device", "cpu"]
    base += ["--batch-size", "3", "--no-progress"]  # batches of 3 and 1, each at B and 2B under guidance
    assert main([*base, "--npz", str(tmp_path / "e.npz"), "--compile", "off"]) == 0
    assert "compile off" in capsys.readouterr().err
    assert main([*base, "--npz", str(tmp_path / "c.npz"), "--compile", "on"]) == 0
    assert "compile on" in capsys.readouterr().err
    eager, compiled = load_npz(tmp_path / "e.npz"), load_npz(tmp_path / "c.npz")
    assert np.array_equal(eager[1], compiled[1])
    # float32 both ways; the fused kernels sum in another order, so a pixel may round to the next level
    diff = np.abs(eager[0].astype(int) - compiled[0].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01
