"""``jitkit invert`` and ``jitkit sample --noise`` end to end on a tiny shapes run; the new sampler flags of
``jitkit sample``; the noise file's bad inputs (shape, class, NaN)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli_sweep import save_tiny_shapes_run

from jitkit.cli import main
from jitkit.eval.inversion import load_noise, save_noise
from jitkit.eval.sample_folder import load_npz


@pytest.fixture()
def run(tiny, tmp_path):
    return save_tiny_shapes_run(tiny, tmp_path / "run", cfg=1.0)


def test_invert_then_sample_regenerates_the_images(run, tmp_path, capsys):
    imgs = tmp_path / "imgs.npz"
    # images the model makes (so that an exact inverse exists), written as a jitkit npz with labels
    assert main(["sample", str(run), "--classes", "3,7", "--per-class", "2", "--sampler", "euler", "--steps", "4",
                 "--npz", str(imgs), "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    noise, js = tmp_path / "noise.npz", tmp_path / "inv.json"
    argv = ["invert", str(run), "--images", str(imgs), "--sampler", "euler", "--steps", "4", "--iters", "12"]
    assert main([*argv, "--out", str(noise), "--json", str(js), "--study", "2,4", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert "reconstruction RMS" in out.out and "steps    2:" in out.err
    nf = load_noise(noise, (3, 16, 16))
    assert nf.noise.shape == (4, 3, 16, 16) and nf.labels.tolist() == [3, 3, 7, 7]
    assert nf.sampler["method"] == "euler" and nf.sampler["steps"] == 4
    rec = json.loads(js.read_text())
    assert [r["steps"] for r in rec["study"]] == [2, 4] and rec["reconstruction"]["rms"] < 0.1
    # the noise file's sampler settings and labels are the defaults of jitkit sample --noise
    back = tmp_path / "back.npz"
    assert (
        main(
            [
                "sample",
                str(run),
                "--noise",
                str(noise),
                "--npz",
                str(back),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    a, ya, _ = load_npz(imgs)
    b, yb, _ = load_npz(back)
    assert yb.tolist() == ya.tolist()
    # the images jitkit sample makes from the file are the ones invert measured its reconstruction error on
    rms = float(np.sqrt((((a.astype(np.float64) - b) / 127.5) ** 2).mean()))
    assert rms == pytest.approx(rec["reconstruction"]["rms"], rel=1e-6)
    # another class from the same noise
    other = tmp_path / "other.npz"
    assert main(["sample", str(run), "--noise", str(noise), "--classes", "0", "--npz", str(other), "--device", "cpu",
                 "--no-progress"]) == 0  # fmt: skip
    assert load_npz(other)[1].tolist() == [0, 0, 0, 0]


def test_sample_takes_the_new_solvers_and_time_grids(run, tmp_path, capsys):
    out = tmp_path / "s"
    argv = [
        "sample",
        str(run),
        "--sampler",
        "dpm++2m",
        "--steps",
        "10",
        "--time-grid",
        "logsnr",
        "--per-class",
        "1",
    ]
    assert main([*argv, "--classes", "0,1", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert "dpm++2m 10 steps (10 network evaluations), logsnr grid" in capsys.readouterr().err
    meta = json.loads((out / "sample_meta.json").read_text())
    assert meta["sampler"]["method"] == "dpm++2m" and meta["sampler"]["time_grid"] == "logsnr"
    # too few steps for the order: explained in the cost line, the images are made
    assert main(["sample", str(run), "--sampler", "dpm++3m", "--steps", "2", "--classes", "0", "--per-class", "1",
                 "--grid", str(tmp_path / "g.png"), "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    assert "reaches order 2 only" in capsys.readouterr().err and (tmp_path / "g.png").is_file()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            ["--sampler", "dpm++9m"],
            "invalid choice: dpm++9m (choose from heun, euler, dpm++2m, dpm++3m, dpm++2m-pc, dpm++3m-pc)",
        ),
        (["--time-grid", "karras"], "invalid choice: karras (choose from uniform, logsnr, edm)"),
        (["--cfg", "nan"], "--cfg"),
        (["--cfg", "inf"], "--cfg"),
    ],
)
def test_sample_refuses_bad_solver_settings(run, tmp_path, capsys, argv, needle):
    rc = None
    with pytest.raises(SystemExit) if "invalid choice" in needle else _nullcontext():  # argparse's own error
        rc = main(["sample", str(run), *argv, "--grid", str(tmp_path / "g.png"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert needle in err.replace("'", "") or needle in err
    if needle == "--cfg":
        assert rc == 2 and "finite" in err
    assert not (tmp_path / "g.png").exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_noise_file_of_another_shape_names_both_shapes(run, tmp_path, capsys):
    from jitkit.config import SamplerConfig

    bad = tmp_path / "n.npz"
    save_noise(bad, torch.zeros(2, 3, 8, 8), [0, 1], ["a", "b"], SamplerConfig())
    assert (
        main(["sample", str(run), "--noise", str(bad), "--grid", str(tmp_path / "g.png"), "--device", "cpu"])
        == 2
    )
    err = capsys.readouterr().err
    assert "image shape [3, 8, 8] but the model makes [3, 16, 16]" in err


def test_noise_file_bad_values_and_counts(run, tmp_path, capsys):
    from jitkit.config import SamplerConfig

    nan = tmp_path / "nan.npz"
    z = torch.zeros(2, 3, 16, 16)
    z[0, 0, 0, 0] = float("nan")
    save_noise(nan, z, [0, 1], [], SamplerConfig())
    assert (
        main(["sample", str(run), "--noise", str(nan), "--grid", str(tmp_path / "g.png"), "--device", "cpu"])
        == 2
    )
    assert "NaN or inf" in capsys.readouterr().err
    ok = tmp_path / "ok.npz"
    save_noise(ok, torch.zeros(2, 3, 16, 16), [0, 1], [], SamplerConfig())
    argv = ["sample", str(run), "--noise", str(ok), "--grid", str(tmp_path / "g.png"), "--device", "cpu"]
    assert main([*argv, "--classes", "0,1,2"]) == 2
    assert "give one class (for all 2 images) or 2 classes, found 3" in capsys.readouterr().err
    assert main([*argv, "--num", "5"]) == 2
    assert "--noise fixes the images" in capsys.readouterr().err
    assert (
        main(
            ["sample", str(run), "--noise", str(tmp_path / "missing.npz"), "--grid", str(tmp_path / "g.png")]
        )
        == 2
    )
    assert "noise file not found" in capsys.readouterr().err


def test_invert_needs_the_class_of_unlabelled_images(run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "a.png")
    argv = ["invert", str(run), "--images", str(folder), "--device", "cpu", "--steps", "2"]
    assert main(argv) == 2
    assert "name them with --class NAME" in capsys.readouterr().err
    assert (
        main([*argv, "--class", "red_circle", "--out", str(tmp_path / "n.npz")]) == 0
    )  # center-cropped to 16 px
    assert load_noise(tmp_path / "n.npz").noise.shape == (1, 3, 16, 16)
    assert main([*argv, "--class", "purple_blob"]) == 2
    assert "neither a class index nor a class name" in capsys.readouterr().err


def test_a_run_sampling_with_a_corrector_is_inverted_with_its_predictor(run, tmp_path, capsys):
    # the shapes preset samples with dpm++2m-pc: invert (no --sampler) uses its predictor, says so and
    # records it in the noise file, so that sample --noise regenerates with the solver that was inverted
    assert json.loads((run / "config.json").read_text())["sampler"]["method"] == "dpm++2m-pc"
    noise = tmp_path / "noise.npz"
    argv = ["invert", str(run), "--images", "data", "--limit", "2", "--iters", "2", "--device", "cpu"]
    assert main([*argv, "--out", str(noise)]) == 0
    out = capsys.readouterr().out
    assert "cannot be inverted step by step; inverting with dpm++2m" in out
    assert load_noise(noise, (3, 16, 16)).sampler["method"] == "dpm++2m"
    # asked for explicitly, the corrector's solver is refused with the one to use
    assert main([*argv, "--sampler", "dpm++2m-pc", "--out", str(tmp_path / "n2.npz")]) != 0
    assert "invert with dpm++2m" in capsys.readouterr().err
