"""Evaluation during training, as callbacks for ``jitkit.train.train(cfg, callbacks=[...])``.

A callback is ``cb(event, info)`` with events "step", "epoch_end", "end"; ``info`` holds "step", "epoch",
"run_dir", "config", "classes", "device" and a lazily built "denoiser" (EMA1 weights, eval mode). Training
never imports this module: the train CLI builds the callbacks with ``make_eval_callbacks(cfg, ...)`` and
passes them in.

- ``ShapesEval``: at the end of a run on ``shapes``, sample ``per_class`` images per class with the run's
  sampler and report the shapes metric (accuracy, colour/shape accuracy, mean IoU).
- ``FIDEval``: every N epochs (and at the end) sample ``num`` images and report FID (and IS) against
  reference statistics, through torch-fidelity's Inception with local weights.

Both sample through ``jitkit.diffusion.generate.generate_images`` in the run's precision, so their images
are the ones ``jitkit sample`` makes for the same seed. Results are printed, appended to ``RUN/eval.jsonl``
and returned (the callback's return value is a dict). Only rank 0 evaluates under torchrun.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.config import RunConfig, SamplerConfig
from jitkit.runtime import dist

__all__ = ["FIDEval", "ShapesEval", "append_eval_log", "fid_due", "make_eval_callbacks"]


def append_eval_log(run_dir: str | Path | None, record: dict[str, Any]) -> None:
    """Append one JSON line to RUN/eval.jsonl (flushed and fsync'ed)."""
    if run_dir is None:
        return
    p = Path(run_dir) / "eval.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _SamplingEval:
    """What the evaluations share: sampling from the run's EMA1 Denoiser and the record of the result.

    Subclasses set ``seed``, ``batch_size``, ``sampler`` (None: the run config's) and ``progress``.
    """

    seed: int
    batch_size: int
    sampler: SamplerConfig | None
    progress: bool
    last: dict[str, Any] | None = None

    def _sample(self, info: dict[str, Any], labels: np.ndarray, desc: str) -> torch.Tensor:
        """uint8 images [N, C, S, S] of ``labels``, in the run's precision (``train.precision``)."""
        from jitkit.diffusion.generate import generate_images

        cfg: RunConfig | None = info.get("config")
        scfg = self.sampler or (cfg.sampler if cfg is not None else SamplerConfig())
        precision = cfg.train.precision if cfg is not None else "fp32"
        return generate_images(
            info["denoiser"],
            labels,
            scfg,
            seed=self.seed,
            batch_size=self.batch_size,
            precision=precision,
            progress=self.progress,
            desc=desc,
        )

    def _record(
        self, event: str, info: dict[str, Any], metric: str, values: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        """The eval.jsonl line of one evaluation (also kept as ``last``)."""
        self.last = {
            "event": event,
            "step": info.get("step"),
            "epoch": info.get("epoch"),
            "metric": metric,
            **extra,
            **values,
        }
        return self.last


class ShapesEval(_SamplingEval):
    """The shapes metric on ``per_class`` samples per class at the end of training (event "end")."""

    def __init__(
        self,
        per_class: int = 16,
        seed: int = 0,
        batch_size: int = 64,
        sampler: SamplerConfig | None = None,
        events: tuple[str, ...] = ("end",),
        save_grid: bool = True,
        progress: bool = True,
    ) -> None:
        self.per_class, self.seed, self.batch_size = per_class, seed, batch_size
        self.sampler, self.events, self.save_grid, self.progress = sampler, events, save_grid, progress

    def __call__(self, event: str, info: dict[str, Any]) -> dict[str, Any] | None:
        if event not in self.events or dist.rank() != 0:
            return None
        from jitkit.data.shapes import class_names
        from jitkit.diffusion.generate import balanced_labels
        from jitkit.eval.shapes_metric import format_shapes_metrics, shapes_metrics
        from jitkit.images import save_grid

        names = class_names()
        labels = balanced_labels(len(names), per_class=self.per_class)
        t0 = time.time()
        images = self._sample(info, labels, "eval shapes")
        m = shapes_metrics(images, labels)
        m["seconds"] = round(time.time() - t0, 2)
        record = self._record(event, info, "shapes", m)
        run_dir = info.get("run_dir")
        if run_dir is not None and self.save_grid:
            path = Path(run_dir) / "samples" / f"eval-shapes-step-{int(info.get('step') or 0):06d}.png"
            save_grid(images, labels, path, names)
            record["grid"] = str(path)
        append_eval_log(run_dir, record)
        print(f"[eval] step {info.get('step')}: {format_shapes_metrics(m)}", file=sys.stderr)
        return record


def fid_due(event: str, epoch: int, every: int, at_end: bool = True) -> bool:
    """FID runs at "end" (when ``at_end``) and at "epoch_end" of epochs every, 2·every, … (``every`` > 0)."""
    if event == "end":
        return at_end
    return event == "epoch_end" and every > 0 and epoch > 0 and epoch % every == 0


class FIDEval(_SamplingEval):
    """FID/IS against reference statistics every ``every_epochs`` epochs (0: only at the end)."""

    def __init__(
        self,
        ref_stats: str | Path,
        num: int = 1000,
        every_epochs: int = 0,
        seed: int = 0,
        batch_size: int = 32,
        sampler: SamplerConfig | None = None,
        inception_weights: str | Path | None = None,
        at_end: bool = True,
        progress: bool = True,
    ) -> None:
        from jitkit.eval.fid import load_stats
        from jitkit.eval.fidelity import find_inception_weights, import_torch_fidelity

        # fail at start-up, not after hours of training
        self.ref = load_stats(ref_stats)
        import_torch_fidelity()
        self.weights = find_inception_weights(inception_weights)
        self.ref_path = str(ref_stats)
        self.num, self.every, self.seed, self.batch_size = num, every_epochs, seed, batch_size
        self.sampler, self.at_end, self.progress = sampler, at_end, progress
        self._extractor = None

    def due(self, event: str, info: dict[str, Any]) -> bool:
        return fid_due(event, int(info.get("epoch") or 0), self.every, self.at_end)

    def __call__(self, event: str, info: dict[str, Any]) -> dict[str, Any] | None:
        if not self.due(event, info) or dist.rank() != 0:
            return None
        from jitkit.diffusion.generate import balanced_labels
        from jitkit.eval.fidelity import InceptionFeatures, extract_features, image_metrics

        den = info["denoiser"]
        if self._extractor is None:
            device = next(den.parameters()).device
            self._extractor = InceptionFeatures(self.weights, device)
        t0 = time.time()
        labels = balanced_labels(den.num_classes, num=self.num)
        images = self._sample(info, labels, "eval FID")
        feats = extract_features(images.split(self.batch_size), self._extractor, len(images), progress=False)
        m = image_metrics(feats, self.ref, prc=False)
        m["seconds"] = round(time.time() - t0, 2)
        record = self._record(event, info, "fid", m, ref=self.ref_path)
        append_eval_log(info.get("run_dir"), record)
        print(
            f"[eval] epoch {info.get('epoch')} step {info.get('step')}: FID {m['fid']:.3f} "
            f"(n {m['n']}), IS {m['inception_score']:.3f}",
            file=sys.stderr,
        )
        return record


def make_eval_callbacks(
    cfg: RunConfig,
    *,
    ref_stats: str | Path | None = None,
    fid_every_epochs: int | None = None,
    fid_num: int = 1000,
    inception_weights: str | Path | None = None,
    shapes_per_class: int = 16,
) -> list:
    """The eval callbacks a run wants: the shapes metric at the end on ``shapes`` data (when
    ``cfg.train.eval_at_end``), and FID every ``fid_every_epochs`` (default ``cfg.train.eval_every_epochs``)
    epochs when reference statistics are given."""
    cbs: list = []
    if str(cfg.data.data).strip().lower() == "shapes" and cfg.train.eval_at_end:
        cbs.append(ShapesEval(per_class=shapes_per_class, sampler=cfg.sampler))
    every = cfg.train.eval_every_epochs if fid_every_epochs is None else fid_every_epochs
    if ref_stats is not None:
        cbs.append(
            FIDEval(
                ref_stats,
                num=fid_num,
                every_epochs=every,
                sampler=cfg.sampler,
                inception_weights=inception_weights,
            )
        )
    elif every and every > 0:
        raise ValueError(
            f"FID every {every} epochs needs reference statistics: give ref_stats=STATS.npz "
            "(make them with jitkit ref-stats DATA --out STATS.npz)"
        )
    return cbs
