"""Experiment tracking with Weights & Biases (train.log, jitkit/train/tracking.py): what the sink logs (through a
fake ``wandb`` module that records its calls), one real offline run, resuming the same wandb run, and the
refusals (an unknown sink, a missing package)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import io
import json
import sys
import types
from pathlib import Path

import pytest

from jitkit.cli import build_parser, main
from jitkit.cli.train import build_config
from jitkit.config import ConfigError, RunConfig
from jitkit.train import StopTraining, train
from jitkit.train.run_folder import read_log
from jitkit.train.tracking import WANDB_ID_FILE


@pytest.fixture(autouse=True)
def _wandb_env(monkeypatch, tmp_path):
    """No network, no output, nothing outside tmp_path; none of the caller's WANDB_* choices."""
    for name in ("WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_ID", "WANDB_ENTITY", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


class FakeRun:
    def __init__(self, kw: dict) -> None:
        self.init = kw
        self.rows: list[dict] = []
        self.metrics: list[tuple[str, dict]] = []
        self.finished: list[int] = []

    def define_metric(self, name: str, **kw) -> None:
        self.metrics.append((name, kw))

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


class FakeImage:
    def __init__(self, path: str, caption: str | None = None) -> None:
        self.path, self.caption = path, caption


@pytest.fixture
def fake_wandb(monkeypatch):
    """A ``wandb`` module that records every run it starts (``.runs``)."""
    mod = types.ModuleType("wandb")
    mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    mod.runs = []

    def init(**kw):
        mod.runs.append(FakeRun(kw))
        return mod.runs[-1]

    mod.init, mod.Image = init, FakeImage
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return mod


def _scalars(run: FakeRun) -> list[dict]:
    return [r for r in run.rows if any(k.startswith("train/") for k in r)]


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_wandb_gets_the_log_records_previews_evaluations_and_config(tmp_path, tiny, fake_wandb):
    cfg = tiny.run_config(
        tmp_path / "r", epochs=1, eval_at_end=False, log="wandb", sample_every=2, grad_clip=1.0
    )

    def evaluation(event, info):  # an evaluation hook returns its eval.jsonl record on rank 0
        if event == "epoch_end":
            return {
                "event": event,
                "step": info["step"],
                "epoch": info["epoch"],
                "metric": "toy",
                "score": 0.5,
            }
        return None

    run_dir = train(cfg, callbacks=[evaluation], progress=False)
    assert len(fake_wandb.runs) == 1
    run = fake_wandb.runs[0]
    stored = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert run.init["id"] == stored and run.init["resume"] == "allow"
    assert run.init["project"] == "jitkit" and run.init["name"] == run_dir.name
    assert run.init["dir"] == str(run_dir) and run.init["config"] == cfg.to_dict()
    assert ("train/*", {"step_metric": "step"}) in run.metrics
    # every log.jsonl record, at its step, with the same values
    logged = read_log(run_dir / "log.jsonl")
    rows = _scalars(run)
    assert [r["step"] for r in rows] == [rec["step"] for rec in logged] == [1, 2, 3, 4]
    for row, rec in zip(rows, logged):
        assert row == {"step": rec["step"], **{f"train/{k}": v for k, v in rec.items() if k != "step"}}
        assert {"train/loss", "train/lr", "train/img_per_s", "train/grad_norm", "train/epoch"} <= set(row)
    # the preview grids (every 2 steps, and the final one) as images at their steps
    previews = [(r["step"], Path(r["samples/preview"].path)) for r in run.rows if "samples/preview" in r]
    assert previews == [(s, run_dir / "samples" / f"step-{s:06d}.png") for s in (2, 4)]
    assert all(p.is_file() for _, p in previews)
    assert {"step": 4, "eval/toy/score": 0.5} in run.rows
    assert run.finished == [0]  # closed once, as a success


def test_wandb_project_and_name_follow_the_environment(tmp_path, tiny, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.setenv("WANDB_NAME", "first try")
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    run_dir = train(tiny.run_config(tmp_path / "r", epochs=1, eval_at_end=False, log="wandb"), progress=False)
    init = fake_wandb.runs[0].init
    assert (init["project"], init["name"], init["id"]) == ("mine", "first try", "abc123")
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == "abc123"


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, tiny, fake_wandb):
    def stop_at_2(event, info):
        if event == "step" and info["step"] == 2:
            raise StopTraining("test")

    cfg = tiny.run_config(tmp_path / "r", epochs=1, eval_at_end=False, log="wandb")
    run_dir = train(cfg, callbacks=[stop_at_2], progress=False)
    first = fake_wandb.runs[0]
    assert first.finished == [0] and [r["step"] for r in _scalars(first)] == [1, 2]
    stored = (run_dir / WANDB_ID_FILE).read_text()
    assert train(cfg, resume="auto", progress=False) == run_dir
    second = fake_wandb.runs[1]
    assert second.init["id"] == first.init["id"] == stored.strip() and second.init["resume"] == "allow"
    assert (run_dir / WANDB_ID_FILE).read_text() == stored
    assert [r["step"] for r in _scalars(second)] == [3, 4] and second.finished == [0]

    # the CLI: the run's config (log=wandb, in config.json and the checkpoint) holds on resume, without --log
    rc, _, err = _run_cli(
        "train", "--resume", "auto", "--out", str(run_dir), "--epochs", "2", "--no-eval", "--no-progress"
    )
    assert rc == 0, err
    third = fake_wandb.runs[2]
    assert third.init["id"] == stored.strip() and [r["step"] for r in _scalars(third)] == [5, 6, 7, 8]
    args = build_parser().parse_args(["train", "--resume", str(run_dir), "--log", "none"])
    assert build_config(args)[0].train.log == "none"  # an explicit --log changes it


def test_the_wandb_run_is_closed_as_failed_when_an_exception_ends_training(tmp_path, tiny, fake_wandb):
    def boom(event, info):
        if event == "step" and info["step"] == 2:
            raise RuntimeError("boom")

    cfg = tiny.run_config(tmp_path / "r", epochs=1, eval_at_end=False, log="tensorboard,wandb")
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, callbacks=[boom], progress=False)
    assert fake_wandb.runs[0].finished == [1]


def _wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: a 7-byte header (":W&B", magic, version), then the LevelDB log
    format (32 KiB blocks of chunks: crc32[4] length[2] type[1] payload; type 1 full, 2 first, 3 middle,
    4 last), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (kind == 0 and length == 0):  # the padding at the end of a block
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts)
            records.append(rec)
            parts = b""
    return records


def test_a_real_offline_run_writes_its_files_under_run_wandb(tmp_path, tiny):
    pytest.importorskip("wandb")
    cfg = tiny.run_config(tmp_path / "r", epochs=1, eval_at_end=False, log="wandb")
    run_dir = train(cfg, progress=False)
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    offline = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    data = offline[0] / f"run-{run_id}.wandb"
    assert data.is_file() and data.stat().st_size > 0
    media = list(offline[0].glob("files/media/images/samples/preview_*.png"))
    assert len(media) == 1  # the final preview grid
    # read back: the run, its config, and the history rows equal to log.jsonl
    records = _wandb_records(data)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_id, run.project, run.display_name) == (run_id, "jitkit", run_dir.name)
    config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    assert config == json.loads(json.dumps(cfg.to_dict()))
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    scalars = [h for h in history if "train/loss" in h]
    logged = read_log(run_dir / "log.jsonl")
    assert [h["step"] for h in scalars] == [rec["step"] for rec in logged] == [1, 2, 3, 4]
    for h, rec in zip(scalars, logged):
        assert {k: h[f"train/{k}"] for k in rec if k != "step"} == {
            k: v for k, v in rec.items() if k != "step"
        }
    assert [h["step"] for h in history if "samples/preview/path" in h] == [4]
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished


def test_unknown_sinks_are_refused_with_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        RunConfig().override({"train.log": "tensorboard,wandbb"})
    msg = str(e.value)
    assert "unknown sink 'wandbb'" in msg and "did you mean 'wandb'" in msg
    assert "valid sinks: tensorboard, wandb, none" in msg
    with pytest.raises(ConfigError, match="'none' stands alone"):
        RunConfig().override({"train.log": "none,wandb"})
    assert RunConfig().train.log_sinks == ("tensorboard",)  # today's default
    assert RunConfig().override({"train.log": "WandB, tensorboard"}).train.log_sinks == (
        "wandb",
        "tensorboard",
    )
    assert RunConfig().override({"train.log": "none"}).train.log_sinks == ()
    rc, _, err = _run_cli("train", "--log", "mlflow", "--out", str(tmp_path / "x"), "--dry-run")
    assert rc == 2 and "--log: unknown sink 'mlflow'" in err and "tensorboard, wandb, none" in err


def test_wandb_without_the_package_is_refused_before_training(tmp_path, tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
    cfg = tiny.run_config(tmp_path / "r", epochs=1, eval_at_end=False, log="wandb")
    with pytest.raises(
        ConfigError, match=r"log=wandb needs the wandb package: pip install 'jitkit\[wandb\]'"
    ):
        train(cfg, progress=False)
    assert not (tmp_path / "r").exists()  # nothing started
    rc, _, err = _run_cli("train", "--log", "wandb", "--out", str(tmp_path / "c"), "--no-progress")
    assert rc == 2 and "--log wandb needs the wandb package: pip install 'jitkit[wandb]'" in err
    assert not (tmp_path / "c").exists()


def test_tensorboard_gets_the_same_records_and_grids(tmp_path, tiny, monkeypatch):
    import jitkit.train.tracking as tracking

    class FakeWriter:
        def __init__(self, log_dir: Path) -> None:
            self.log_dir, self.scalars, self.images, self.closed = log_dir, [], [], 0

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def add_image(self, tag, img, step, dataformats):
            self.images.append((tag, img.shape, step, dataformats))

        def close(self):
            self.closed += 1

    writers: list[FakeWriter] = []
    monkeypatch.setattr(tracking, "_tensorboard", lambda d: writers.append(FakeWriter(d)) or writers[-1])
    run_dir = train(
        tiny.run_config(tmp_path / "r", epochs=1, eval_at_end=False), progress=False
    )  # the default
    (w,) = writers
    assert w.log_dir == run_dir / "tb" and w.closed == 1
    logged = read_log(run_dir / "log.jsonl")
    assert [(s, v) for t, v, s in w.scalars if t == "train/loss"] == [(r["step"], r["loss"]) for r in logged]
    assert {t for t, _, _ in w.scalars} >= {"train/loss", "train/lr", "train/img_per_s", "train/epoch"}
    ((tag, shape, step, fmt),) = w.images
    assert (tag, step, fmt) == ("samples/preview", 4, "HWC") and shape[2] == 3
