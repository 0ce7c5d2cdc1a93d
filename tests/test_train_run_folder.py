"""The run folder: fresh folders never overwrite a run, the one resume resolution, log.jsonl handling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jitkit.checkpoint import CheckpointError
from jitkit.train.run_folder import (
    fresh_run_dir,
    read_log,
    resolve_resume,
    restart_run,
    run_dir_of,
    saved_run_config,
    truncate_log,
)


def _fake_checkpoint(run: Path, step: int, mtime: float) -> Path:
    """RUN/checkpoints/last with the files that make it a complete checkpoint folder, dated ``mtime``."""
    ck = run / "checkpoints" / "last"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"")
    (ck / "meta.json").write_text(json.dumps({"step": step}))
    os.utime(ck / "meta.json", (mtime, mtime))
    return ck


def test_resume_auto_without_a_run_starts_fresh_with_a_note(tmp_path):
    assert resolve_resume(None, tmp_path / "runs" / "x") == (None, None)
    ckpt, note = resolve_resume("auto", tmp_path / "runs" / "x")
    assert ckpt is None and "no run with a checkpoint under" in note and str(tmp_path / "runs" / "x") in note
    (tmp_path / "runs" / "x" / "checkpoints").mkdir(parents=True)  # a run folder that never saved
    assert resolve_resume("auto", tmp_path / "runs" / "x")[0] is None


def test_resume_auto_picks_the_most_recent_run_among_out_and_out_n(tmp_path):
    out = tmp_path / "shapes"
    _fake_checkpoint(out, 10, mtime=1_000)
    newest = _fake_checkpoint(tmp_path / "shapes-2", 3, mtime=2_000)
    (tmp_path / "shapes-3").mkdir()  # newer but without a checkpoint
    _fake_checkpoint(tmp_path / "other", 50, mtime=3_000)  # not OUT-N
    assert resolve_resume("auto", out) == (newest, None)
    os.utime(out / "checkpoints" / "last" / "meta.json", (4_000, 4_000))
    assert resolve_resume("auto", out) == (out / "checkpoints" / "last", None)


def test_resume_path_forms_and_paths_that_are_not_checkpoints(tmp_path):
    ck = _fake_checkpoint(tmp_path / "run", 5, mtime=1_000)
    for form in (tmp_path / "run", ck, ck / "meta.json", str(ck)):
        assert resolve_resume(form, tmp_path / "elsewhere") == (ck, None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_resume(tmp_path / "missing", tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(CheckpointError, match="expected a run folder"):
        resolve_resume(tmp_path / "notes", tmp_path)
    with pytest.raises(CheckpointError, match="a file"):
        resolve_resume(tmp_path / "notes" / "a.txt", tmp_path)
    assert run_dir_of(ck) == tmp_path / "run"
    assert run_dir_of(tmp_path / "loose" / "ck") == tmp_path / "loose"


def test_fresh_run_dir_never_reuses_a_run(tmp_path):
    out = tmp_path / "shapes"
    assert fresh_run_dir(out) == out
    out.mkdir()
    assert fresh_run_dir(out) == out  # empty: used
    (out / "log.jsonl").write_text("")
    assert fresh_run_dir(out) == tmp_path / "shapes-2"
    (tmp_path / "shapes-2").mkdir()
    assert fresh_run_dir(out) == tmp_path / "shapes-3"
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        fresh_run_dir(tmp_path / "file")


def test_read_log_skips_a_partial_line_and_truncate_drops_later_steps(tmp_path):
    log = tmp_path / "log.jsonl"
    assert read_log(log) == []
    log.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo'
    )
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4, 5]
    assert truncate_log(log, 3) is True
    assert [r["step"] for r in read_log(log)] == [1, 2, 3]
    assert truncate_log(log, 3) is False


def _started_run(run: Path, mtime: float, **train) -> Path:
    """A run folder as a run leaves it when killed before its first checkpoint: config.json and no checkpoint."""
    from jitkit.config import RunConfig

    run.mkdir(parents=True)
    (run / "checkpoints").mkdir()
    cfg = RunConfig().override({f"train.{k}": v for k, v in train.items()})
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    os.utime(run / "config.json", (mtime, mtime))
    return run


def test_resume_auto_starts_again_in_place_a_run_that_never_saved(tmp_path):
    out = tmp_path / "r"
    assert restart_run("auto", out) is None  # nothing there: a fresh run
    _started_run(out, 1_000, ckpt_every=7)
    newest = _started_run(tmp_path / "r-2", 2_000)
    _started_run(tmp_path / "r-old", 3_000)  # not OUT-N
    assert restart_run("auto", out) == newest and restart_run(None, out) is None
    assert restart_run(str(tmp_path / "r"), out) is None  # only "auto" restarts
    os.utime(out / "config.json", (4_000, 4_000))
    assert restart_run("auto", out) == out and saved_run_config(out).train.ckpt_every == 7
    # a run with a checkpoint is resumed, never restarted
    _fake_checkpoint(out, 3, mtime=5_000)
    assert resolve_resume("auto", out)[0] == out / "checkpoints" / "last"
    assert restart_run("auto", out) == newest  # (only asked for when no checkpoint was found)
