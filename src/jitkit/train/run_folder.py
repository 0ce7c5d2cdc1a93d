"""The run folder of a training run, and the one resume resolution (the engine and ``jitkit train`` use it):

    RUN/config.json  classes.json  log.jsonl  loss.png  samples/step-NNNNNN.png  checkpoints/…

A fresh run never overwrites an existing one (OUT is taken → OUT-2, OUT-3, …); ``resume="auto"`` continues the
most recent of OUT and OUT-N that holds a checkpoint, or, when none has one, starts again in place the most
recent one that stopped before its first checkpoint (``restart_run``). Only rank 0 calls the writers here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from jitkit.checkpoint import latest_checkpoint, resolve_checkpoint_path
from jitkit.checkpoint.layout import META_FILE
from jitkit.checkpoint.load import checkpoint_meta
from jitkit.config import RunConfig
from jitkit.fileio import atomic_save_figure, atomic_write_text

__all__ = [
    "checkpoint_config",
    "find_resume_run",
    "fresh_run_dir",
    "plot_loss",
    "prepare_run_dir",
    "read_log",
    "saved_run_config",
    "resolve_resume",
    "restart_run",
    "run_dir_of",
    "truncate_log",
]


# -- where a run goes ----------------------------------------------------------------------------------------


def find_resume_run(out: str | Path) -> Path | None:
    """The most recent run folder among OUT and OUT-N with a checkpoint (by its meta.json time), else None."""
    out = Path(out)
    cands = [out] + sorted(out.parent.glob(f"{out.name}-*")) if out.parent.exists() else [out]
    best, best_t = None, -1.0
    for c in cands:
        ck = latest_checkpoint(c) if c.is_dir() else None
        if ck is None:
            continue
        t = (ck / META_FILE).stat().st_mtime
        if t > best_t:
            best, best_t = c, t
    return best


def fresh_run_dir(out: str | Path) -> Path:
    """OUT if it is new or empty, else the first free OUT-2, OUT-3, … (a run is never overwritten)."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file; expected a folder for the run (train.out)")
    k = 2
    while (out.parent / f"{out.name}-{k}").exists():
        k += 1
    return out.parent / f"{out.name}-{k}"


def resolve_resume(resume: str | Path | None, out: str | Path) -> tuple[Path | None, str | None]:
    """The checkpoint folder a run continues from, and a note when ``"auto"`` found nothing.

    ``resume``: None or "" (a fresh run: ``(None, None)``); ``"auto"`` (the latest checkpoint of the most
    recent run under ``out``, see :func:`find_resume_run`; ``(None, note)`` when there is none); or a path (a
    run folder, a checkpoint folder or a file in one). A path that is not a checkpoint raises
    ``FileNotFoundError`` or :class:`jitkit.checkpoint.CheckpointError` saying what was expected.
    """
    if resume is None or str(resume) == "":
        return None, None
    if str(resume) == "auto":
        run = find_resume_run(out)
        if run is None:
            return None, f"no run with a checkpoint under {out}; starting a fresh run"
        return resolve_checkpoint_path(run), None
    return resolve_checkpoint_path(resume), None


def restart_run(resume: str | Path | None, out: str | Path) -> Path | None:
    """The run folder ``resume="auto"`` starts again from step 0 when no run under ``out`` has a checkpoint.

    That is the most recent (by its config.json) of OUT and OUT-N that was created but stopped before its
    first checkpoint: continuing it in place keeps its config (e.g. ``ckpt_every``) instead of opening yet
    another OUT-N. None for any other ``resume``, or when there is no such folder. Call it after
    :func:`resolve_resume` found no checkpoint.
    """
    if resume is None or str(resume) != "auto":
        return None
    out = Path(out)
    numbered = [p for p in out.parent.glob(f"{out.name}-*") if p.name[len(out.name) + 1 :].isdigit()]
    best, best_t = None, -1.0
    for c in [out, *numbered]:
        cfg = c / "config.json"
        if not cfg.is_file() or latest_checkpoint(c) is not None:
            continue
        t = cfg.stat().st_mtime
        if t > best_t:
            best, best_t = c, t
    return best


def saved_run_config(run_dir: Path) -> RunConfig:
    """The config a run folder was started with (its config.json), e.g. of a run with no checkpoint yet."""
    path = Path(run_dir) / "config.json"
    try:
        return RunConfig.from_dict(json.loads(path.read_text()), strict=False)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); delete the run folder or use another output"
        ) from e


def run_dir_of(ckpt: Path) -> Path:
    """The run folder of a checkpoint folder (RUN/checkpoints/last → RUN; a bare checkpoint → its parent)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def checkpoint_config(ckpt: Path) -> RunConfig:
    """The run config saved in a checkpoint folder (its meta.json only; no weights are read)."""
    return RunConfig.from_dict(checkpoint_meta(ckpt)["config"], strict=False)


def prepare_run_dir(run_dir: Path, cfg: RunConfig, classes: list[str]) -> None:
    """Create RUN, RUN/samples and RUN/checkpoints; write config.json and classes.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1) + "\n")
    atomic_write_text(run_dir / "classes.json", json.dumps(classes, indent=1) + "\n")


# -- log.jsonl and loss.png --------------------------------------------------------------------------------


def read_log(log_path: str | Path) -> list[dict]:
    """The records of a log.jsonl (a partial last line from a kill is skipped)."""
    out = []
    p = Path(log_path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_log(log_path: Path, step: int) -> bool:
    """Drop the records after ``step`` (written after the checkpoint a run resumes from); True if any were."""
    rows = read_log(log_path)
    keep = [r for r in rows if r.get("step", 0) <= step]
    if len(keep) == len(rows):
        return False
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in keep))
    return True


def plot_loss(log_path: Path, out_png: Path) -> Path | None:
    """loss.png from log.jsonl: the logged loss against the step (log scale), with a smoothed curve."""
    pts = [(r["step"], r["loss"]) for r in read_log(log_path) if "loss" in r and math.isfinite(r["loss"])]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps, losses = zip(*pts)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    marker = "o" if len(pts) < 20 else None
    ax.plot(steps, losses, lw=0.8, alpha=0.45, marker=marker, label="loss (logged mean)")
    k = max(1, len(losses) // 25)
    if k > 1:
        sm = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, sm, lw=1.6, label=f"moving mean ({k} points)")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("v-loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, out_png)
    plt.close(fig)
    return out_png
