"""Experiment tracking beside log.jsonl: the TensorBoard and Weights & Biases sinks of ``train.log``.

The :class:`~jitkit.train.report.Reporter` of rank 0 opens the sinks named by ``train.log`` (see
:func:`jitkit.config.schema.log_sinks`) and hands each one what it writes itself:

* ``scalars(step, rec)``: every log.jsonl record (loss, lr, img_per_s, time, epoch, grad_norm when clipping);
* ``image(step, name, path)``: a sample grid PNG (the previews in RUN/samples, an evaluation's grid);
* ``evaluation(step, record)``: the record an evaluation hook returned (the line it appended to eval.jsonl);
* ``close(failed)``: at the end of the run, also when a signal or an exception ended it.

TensorBoard writes events to RUN/tb when the optional ``tensorboard`` package is installed (silently none
without it: the default ``train.log``). Weights & Biases needs the ``wandb`` package (``jitkit[wandb]``):
the run is named after the run folder, in project ``jitkit``, unless WANDB_NAME / WANDB_PROJECT say otherwise
(WANDB_ENTITY, WANDB_MODE, … are wandb's own); its files go to RUN/wandb, and its id is kept in
RUN/wandb_id.txt so that a resumed training run continues the same wandb run. wandb's x axis is the metric
``step`` (the optimiser step of log.jsonl), so the steps a resumed run repeats do not clash with wandb's own
step counter.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jitkit.config import ConfigError
from jitkit.fileio import atomic_write_text

__all__ = ["WANDB_ID_FILE", "open_sinks", "require_sinks"]

WANDB_ID_FILE = "wandb_id.txt"
_WANDB_INSTALL = "pip install 'jitkit[wandb]'"


def require_sinks(sinks: Sequence[str]) -> None:
    """Raise ``ConfigError`` before a run starts when a sink of ``sinks`` needs a package that is missing
    (``wandb``). TensorBoard is optional as it always was: without the package a run writes no events."""
    if "wandb" in sinks and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            f"log=wandb needs the wandb package: {_WANDB_INSTALL} (expected `import wandb` to work, found no "
            "module named wandb; or choose log=tensorboard or log=none)"
        )


def open_sinks(sinks: Sequence[str], run_dir: Path, config: dict[str, Any]) -> list[Any]:
    """The open sinks of ``sinks`` for the run in ``run_dir`` (rank 0 only); ``config`` is the resolved run
    config as a dict (wandb's run config). A sink that fails to open closes the ones opened before it."""
    opened: list[Any] = []
    try:
        for name in sinks:
            if name == "tensorboard":
                writer = _tensorboard(run_dir / "tb")
                if writer is not None:
                    opened.append(TensorBoardSink(writer))
            elif name == "wandb":
                opened.append(WandbSink(run_dir, config))
            else:  # the config refuses other names; a caller that builds its own list gets told
                raise ConfigError(f"unknown log sink {name!r}; valid sinks: tensorboard, wandb")
    except BaseException:
        for sink in opened:
            sink.close(failed=True)
        raise
    return opened


def _tensorboard(log_dir: Path) -> Any:
    """A SummaryWriter in ``log_dir``, or None without the optional tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(log_dir))
    except Exception:
        return None


def _numbers(record: dict[str, Any], skip: Sequence[str] = ()) -> dict[str, float]:
    """The numeric values of ``record`` (no booleans, no ``skip`` keys)."""
    return {
        k: v
        for k, v in record.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


# the keys of an evaluation record that say when and what, not how well
_EVAL_META = ("step", "epoch", "event")


class TensorBoardSink:
    """Scalars under ``train/`` and ``eval/<metric>/``, sample grids as images."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def scalars(self, step: int, rec: dict[str, Any]) -> None:
        for k, v in _numbers(rec, skip=("step", "time")).items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def image(self, step: int, name: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            hwc = np.asarray(im.convert("RGB"))  # [H, W, 3] uint8
        self.writer.add_image(name, hwc, step, dataformats="HWC")

    def evaluation(self, step: int, record: dict[str, Any]) -> None:
        metric = record.get("metric", "eval")
        for k, v in _numbers(record, skip=_EVAL_META).items():
            self.writer.add_scalar(f"eval/{metric}/{k}", v, step)
        if record.get("grid"):
            self.image(step, f"eval/{metric}_grid", Path(record["grid"]))

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbSink:
    """One wandb run per run folder: created on the first start, continued on every resume."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ConfigError(f"log=wandb needs the wandb package: {_WANDB_INSTALL} ({e})") from e
        self.wandb = wandb
        run_id = wandb_run_id(run_dir)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "jitkit",
                entity=os.environ.get("WANDB_ENTITY") or None,
                name=os.environ.get("WANDB_NAME") or run_dir.name,
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                config=config,
                allow_val_change=True,  # a resumed run may change e.g. its epochs
            )
        except Exception as e:  # no API key, no network, …: say how to log without an account
            raise RuntimeError(
                f"wandb.init failed for the run folder {run_dir} (wandb run id {run_id}): {e}. Log in "
                "(`wandb login`), set WANDB_MODE=offline to keep the run in RUN/wandb and `wandb sync` it "
                "later, or train with log=tensorboard or log=none"
            ) from e
        self.run.define_metric("step")
        for prefix in ("train/*", "samples/*", "eval/*"):
            self.run.define_metric(prefix, step_metric="step")

    def scalars(self, step: int, rec: dict[str, Any]) -> None:
        self.run.log({"step": step, **{f"train/{k}": v for k, v in rec.items() if k != "step"}})

    def image(self, step: int, name: str, path: Path) -> None:
        self.run.log({"step": step, name: self.wandb.Image(str(path), caption=f"step {step}")})

    def evaluation(self, step: int, record: dict[str, Any]) -> None:
        metric = record.get("metric", "eval")
        row: dict[str, Any] = {"step": step}
        row.update({f"eval/{metric}/{k}": v for k, v in _numbers(record, skip=_EVAL_META).items()})
        if record.get("grid"):
            row[f"eval/{metric}_grid"] = self.wandb.Image(str(record["grid"]), caption=f"step {step}")
        self.run.log(row)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def wandb_run_id(run_dir: Path) -> str:
    """The wandb run id of ``run_dir``: the one in RUN/wandb_id.txt, else a new one (WANDB_RUN_ID when set)
    written there first, so that every later start of this run folder continues the same wandb run."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        stored = path.read_text(encoding="utf-8").strip()
        if stored:
            return stored
    run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id
