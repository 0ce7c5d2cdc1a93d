"""The fault and bad-input battery at the command line (issue 18): a folder trains with one command, and every
bad input is refused (exit 2, one line saying what was expected, what was found and what to do) before it
costs anything, or handled.

Kept closed elsewhere, beside their modules: bad image kinds (test_data_folder: empty, text, truncated,
odd modes, tiny), a kill during a checkpoint write (test_checkpoint: SIGKILL never corrupts ``last``),
pickled code never runs (test_checkpoint_reference), the demo server's path traversal and non-finite
parameters (test_demo), SIGINT/SIGTERM save and exit 130/143 (test_train_signals), EXIF orientation
(test_data_crop), one warning for unreadable images over all DataLoader workers (test_train_batching).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jitkit.cli import build_parser, main
from jitkit.cli.train import build_config


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _config(*argv: str):
    return build_config(build_parser().parse_args(["train", *argv]))


def _images(folder: Path, n: int, size: int = 16, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{k}.png")


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> Path:
    """A user's folder: 3 class folders of 16 px images (the shapes preset's model is 16 px)."""
    root = tmp_path_factory.mktemp("own")
    for c in ("cat", "dog", "emu"):
        _images(root / c, 6, seed=len(c) + ord(c[0]))
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny) -> Path:
    from jitkit.train import train

    return train(tiny.run_config(tmp_path_factory.mktemp("run") / "r", epochs=1), progress=False)


def _tiny_sets(tiny) -> list[str]:
    """The tiny 16 px model on the command line (--set model.K=V), as the training tests use it."""
    return [f"--set=model.{k}={v}" for k, v in tiny.RUN_MODEL.items() if k != "name"]


# -- a folder trains with one command ---------------------------------------------------------------------


def test_a_class_folder_trains_with_one_command(own, tmp_path, tiny):
    out = tmp_path / "run"
    flags = [
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--no-progress",
    ]
    rc, stdout, err = _run("train", "--data", str(own), "--out", str(out), *flags)
    assert rc == 0, err
    assert "data " + str(own) + ": 3 classes (cat, dog, emu): model.num_classes=3 (from the data)" in stdout
    assert "random left-right flips off (--hflip to turn them on)" in stdout
    assert "num_classes=3" in stdout and "hflip=False" in stdout  # the printed config shows the decisions
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["num_classes"] == 3 and saved["data"]["hflip"] is False
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog", "emu"]
    # --resume keeps the checkpoint's count, whatever the data says now
    cfg, resume, _ = _config("--resume", str(out), "--data", "shapes")
    assert resume.endswith("last") and cfg.model.num_classes == 3


def test_one_folder_of_images_is_one_class_trained_unconditionally(tmp_path):
    _images(tmp_path / "faces", 5)
    cfg, _, notes = _config("--data", str(tmp_path / "faces"))
    assert cfg.model.num_classes == 1 and cfg.sampler.cfg == 1.0 and cfg.diffusion.label_drop_prob == 0.0
    assert any("one class, trained unconditionally" in n for n in notes)
    cfg, _, _ = _config("--data", str(tmp_path / "faces"), "--set", "sampler.cfg=2")
    assert cfg.sampler.cfg == 2.0 and cfg.diffusion.label_drop_prob == 0.0  # what was set is kept


def test_the_class_count_set_by_hand_must_match_the_data(own):
    rc, _, err = _run("train", "--data", str(own), "--set", "model.num_classes=10", "--dry-run")
    assert rc == 2 and "model.num_classes=10 was set, but the data" in err and "3 classes" in err
    assert "drop the setting" in err


def test_flips_are_off_for_own_data_on_in_the_imagenet_presets_and_as_asked(own):
    assert _config("--data", str(own))[0].data.hflip is False
    assert _config("--data", str(own), "--hflip")[0].data.hflip is True
    assert _config()[0].data.hflip is True  # the default run (shapes) keeps its tuned recipe
    assert _config("--data", str(own), "--preset", "imagenet256-b16")[0].data.hflip is True  # the reference
    assert _config("--data", str(own), "--preset", "imagenet256-b16", "--no-hflip")[0].data.hflip is False


# -- refused before any work ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,close", [("foo", None), ("JiT-X/9", "JiT-T/4"), ("JiT-B/61", "JiT-B/16")])
def test_an_unregistered_model_name_is_refused(tmp_path, name, close):
    rc, _, err = _run("train", "--model", name, "--out", str(tmp_path / "r"))
    assert rc == 2 and f"--model {name}: unknown model" in err and "registered models: JiT-T/2" in err
    assert (f"did you mean {close!r}" in err) if close else "did you mean" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--epochs", "-1"], "--epochs must be >= 1, found -1"),
        (["--epochs", "0"], "--epochs must be >= 1, found 0"),
        (["--max-steps", "-3"], "--max-steps must be >= 1 (or 0: the epochs decide), found -3"),
        (["--blr", "nan"], "--blr: expected a finite number, found nan"),
        (["--set", "train.lr=inf"], "--lr: expected a finite number, found 'inf'"),
        (["--set", "diffusion.P_std=.nan"], "P_std: expected a finite number, found nan"),
    ],
)
def test_training_settings_that_cannot_work_are_refused_before_a_run_folder(tmp_path, argv, needle):
    rc, _, err = _run("train", "--out", str(tmp_path / "r"), *argv)
    assert rc == 2 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_invalid_yaml_names_file_line_and_column(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("train:\n  epochs: 3\n  blr: [1e-4\n")
    rc, _, err = _run("train", "--config", str(y), "--dry-run")
    assert rc == 2 and f"--config {y}: invalid YAML at line 4, column 1" in err and "Traceback" not in err
    y.write_text("train:\n\tepochs: 3\n")
    rc, _, err = _run("train", "--config", str(y), "--dry-run")
    assert rc == 2 and "line 2, column 1" in err and "'\\t'" in err
    y.write_text("train:\n  blr: .nan\n")
    rc, _, err = _run("train", "--config", str(y), "--dry-run")
    assert rc == 2 and "blr: expected a finite number, found nan" in err


@pytest.mark.parametrize("flag,value", [("--cfg", "nan"), ("--cfg", "inf"), ("--interval", "nan")])
def test_non_finite_sampler_values_are_refused(tiny_run, tmp_path, flag, value):
    extra = ["1.0"] if flag == "--interval" else []
    rc, _, err = _run(
        "sample", str(tiny_run), "--num", "3", "--out", str(tmp_path / "s"), flag, value, *extra
    )
    assert rc == 2 and f"{flag}: expected a finite number, found {value}" in err, err
    assert not (tmp_path / "s").exists()


def test_an_npz_that_cannot_fit_in_memory_is_refused_at_once(tiny_run, tmp_path):
    rc, _, err = _run("sample", str(tiny_run), "--num", "1000000000", "--npz", str(tmp_path / "a.npz"))
    assert rc == 2 and "--npz" in err and "1,000,000,000 images" in err and "--out DIR" in err
    assert "jitkit sample: 1000000000 images" not in err  # refused before the weights were loaded
    assert not list(tmp_path.iterdir())


def test_sampling_memory_does_not_grow_with_num(tiny_run, tmp_path):
    """``--num 10^8 --out DIR`` under a 2 GiB address-space limit: the old label array and index lists alone
    needed more than 4 GB; now images appear and the process stays alive (then it is stopped)."""
    resource = pytest.importorskip("resource")
    limit = 2 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "jitkit", "sample", str(tiny_run), "--num", "100000000", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    proc = subprocess.Popen(
        [*cmd, "--device", "cpu", "--precision", "fp32", "--no-progress", "--batch-size", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=cap,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("*.png"))) < 16:
            time.sleep(0.2)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert alive, f"the process ended on its own (rc {proc.returncode}):\n{err[-2000:]}"
    assert len(list(out.glob("*.png"))) >= 16 and "MemoryError" not in err
    meta = json.loads((out / "sample_meta.json").read_text())
    assert meta["num_images"] == 100_000_000


# -- resume, data and files ------------------------------------------------------------------------------


def test_resume_auto_after_a_kill_before_the_first_checkpoint_continues_in_that_folder(tmp_path, tiny):
    from jitkit.train import train
    from jitkit.train.run_folder import prepare_run_dir

    out = tmp_path / "R"
    # what a kill before the first checkpoint leaves: the run folder with its config.json, no checkpoint
    first = tiny.run_config(out, ckpt_every=7)
    prepare_run_dir(out, first, [str(c) for c in range(16)])
    (out / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    cfg, resume, _ = _config("--resume", "auto", "--out", str(out), "--max-steps", "2")
    assert resume == "auto" and cfg.train.ckpt_every == 7 and cfg.model.depth == 2  # the run's own config
    run_dir = train(cfg, resume=resume, progress=False)
    assert run_dir == out and not (tmp_path / "R-2").exists()
    assert json.loads((out / "checkpoints" / "last" / "meta.json").read_text())["step"] == 2


def test_prepare_and_train_take_file_names_with_any_bytes(tmp_path):
    raw = os.fsencode(tmp_path / "src") + b"/caf\xe9"
    _images(Path(os.fsdecode(raw)), 3)
    os.rename(raw + b"/0.png", raw + b"/\xff\xfe.png")
    rc, _, err = _run(
        "prepare", "--data", str(tmp_path / "src"), "--size", "16", "--out", str(tmp_path / "c")
    )
    assert rc == 0, err
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["count"] == 3
    assert (tmp_path / "c" / "sources.txt").read_bytes().splitlines()[0] == b"caf\xe9/1.png"
    cfg, _, notes = _config("--data", str(tmp_path / "c"))
    assert cfg.model.num_classes == 1 and any("one class, trained unconditionally" in n for n in notes)


def test_import_of_a_file_that_is_no_checkpoint_says_what_it_found(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "page.pth").write_bytes(b"<html>not found</html>")
    rc, _, err = _run("import", str(tmp_path / "empty.pth"), "--out", str(tmp_path / "r"))
    assert rc == 2 and "is empty (0 bytes)" in err and "EOFError" not in err
    rc, _, err = _run("import", str(tmp_path / "page.pth"), "--out", str(tmp_path / "r"))
    assert rc == 2 and "not a PyTorch checkpoint" in err and "b'<html>" in err and "(101)" not in err


def test_eval_names_the_file_and_line_of_a_bad_class_index(tiny_run, tmp_path):
    out = tmp_path / "s"
    assert _run("sample", str(tiny_run), "--per-class", "1", "--out", str(out), "--no-progress")[0] == 0
    rows = (out / "labels.csv").read_text().splitlines()
    rows[3] = rows[3].split(",")[0] + ",abc,x"
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    rc, _, err = _run("eval", str(out), "--metric", "shapes")
    assert rc == 2 and f"{out / 'labels.csv'}, line 4 (00002.png): class_index must be an integer" in err


def test_disk_full_on_a_small_tmpfs(tmp_path, tiny):
    """A real full disk where the platform lets us mount a 1 MiB tmpfs (root on Linux); skipped otherwise."""
    small = tmp_path / "small"
    small.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        argv = ["train", "--model", "JiT-T/4", "--out", str(small / "r"), "--set", "data.per_class=2"]
        argv += ["--epochs", "1", "--batch-size", "4", "--no-eval", "--no-progress", "--threads", "1"]
        rc, _, err = _run(*argv, "--precision", "fp32", *_tiny_sets(tiny))
        assert rc == 4 and "out of disk space while saving checkpoint" in err, err
        assert "there was no previous checkpoint to keep" in err and "free on" in err
        assert not [p for p in (small / "r" / "checkpoints").iterdir()]  # nothing half written is left
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, timeout=30)
