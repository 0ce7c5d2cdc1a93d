"""What a run reports while it trains: log.jsonl records, the tracking sinks (TensorBoard, Weights & Biases:
``train.log``, see :mod:`jitkit.train.tracking`), the progress bar and the sample grids (previews).

Every ``log_every`` steps (and at the last step) rank 0 appends one record to RUN/log.jsonl and hands the
same record to each sink:

    {"step", "epoch" (fractional), "loss" (mean over the steps since the last record), "lr", "img_per_s",
     "time" (seconds since the loop started), "grad_norm" (when clipping)}
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from jitkit.config import RunConfig
from jitkit.train.tracking import open_sinks

__all__ = ["Reporter", "preview_labels", "write_preview"]


class Reporter:
    """Writes the log records of rank 0 (``main``); on other ranks it only counts.

    ``progress``: a tqdm bar with the smoothed loss, img/s and LR. ``sinks``: the tracking sinks to open for
    the run in ``run_dir`` (``train.log``'s names, see :mod:`jitkit.train.tracking`); ``config``: the resolved
    run config as a dict, for the sinks that keep it. Use it as a context manager (or call :meth:`close`):
    the sinks are closed also when an exception ends the run, and told so.
    """

    def __init__(
        self,
        log_path: Path,
        *,
        main: bool,
        progress: bool,
        total_steps: int,
        step: int,
        steps_per_epoch: int,
        effective_batch: int,
        log_every: int,
        sinks: Sequence[str] = (),
        run_dir: Path | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.main, self.total_steps, self.steps_per_epoch = main, total_steps, steps_per_epoch
        self.effective_batch, self.log_every = effective_batch, log_every
        self.smooth: float | None = None
        self.t_start = time.perf_counter()
        self._reset_window()
        run_dir = Path(run_dir) if run_dir is not None else Path(log_path).parent
        self.sinks = open_sinks(sinks, run_dir, config or {}) if main else []
        self.log_f = open(log_path, "a") if main else None  # noqa: SIM115 - closed in close()
        self.bar = None
        if main and progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stdout)

    def _reset_window(self) -> None:
        self.win_loss, self.win_n, self.win_t0 = 0.0, 0, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float | None) -> None:
        """Count optimiser step ``step`` (from 1) of ``epoch``; write a record when one is due."""
        self.smooth = loss if self.smooth is None else 0.95 * self.smooth + 0.05 * loss
        self.win_loss += loss
        self.win_n += 1
        if self.main and (step % self.log_every == 0 or step == self.total_steps):
            self._record(step, epoch, lr, grad_norm)
        if self.bar is not None:
            self.bar.update(1)

    def _record(self, step: int, epoch: int, lr: float, grad_norm: float | None) -> None:
        ips = self.win_n * self.effective_batch / max(time.perf_counter() - self.win_t0, 1e-9)
        rec = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": self.win_loss / self.win_n,
            "lr": lr,
            "img_per_s": round(ips, 2),
            "time": round(self.elapsed(), 3),
        }
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        self.log_f.write(json.dumps(rec) + "\n")
        self.log_f.flush()
        for sink in self.sinks:
            sink.scalars(step, rec)
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"ep {epoch} loss {self.smooth:.4f} {ips:.0f} img/s lr {lr:.2e}", refresh=False
            )
        self._reset_window()

    def image(self, step: int, name: str, path: Path) -> None:
        """Hand the sample grid ``path`` of ``step`` to the sinks (as ``name``, e.g. ``samples/preview``)."""
        for sink in self.sinks:
            sink.image(step, name, path)

    def evaluation(self, step: int, record: dict[str, Any]) -> None:
        """Hand an evaluation hook's record (its eval.jsonl line) of ``step`` to the sinks."""
        for sink in self.sinks:
            sink.evaluation(step, record)

    def end_progress(self) -> None:
        """Close the progress bar (before the run's last messages)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """Close log.jsonl, the bar and the sinks (``failed``: an exception ended the run; wandb marks it)."""
        if self.log_f is not None:
            self.log_f.close()
            self.log_f = None
        self.end_progress()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close(failed)


def preview_labels(num_classes: int) -> list[int]:
    """The labels of a preview grid: 8 images of each of at most 16 (evenly spread) classes, in order."""
    C = num_classes
    shown = list(range(C)) if C <= 16 else [round(i * (C - 1) / 15) for i in range(16)]
    return [c for c in shown for _ in range(8)]


def write_preview(den: nn.Module, cfg: RunConfig, classes: list[str], path: Path, precision: str) -> Path:
    """A grid of ``den``'s samples with the run's sampler, one row per class: the images of
    ``jitkit sample RUN --per-class 8 --seed <train.seed>`` (per-image seeds, batches of 16)."""
    from jitkit.diffusion.generate import generate_images
    from jitkit.images import save_grid

    y = preview_labels(cfg.model.num_classes)
    images = generate_images(den, y, cfg.sampler, seed=cfg.train.seed, batch_size=16, precision=precision)
    return save_grid(images, y, path, classes)
