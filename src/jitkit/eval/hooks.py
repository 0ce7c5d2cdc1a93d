"""Evaluation during training, as callbacks for ``jitkit.train.train(cfg, callbacks=[...])``.

A callback is ``cb(event, info)`` with events "step", "epoch_end", "end", called on every rank; ``info`` is
described in :mod:`jitkit.train.callbacks` ("step", "epoch", "run_dir", "config", "precision", "rank",
"world_size", "is_main" and a lazily built "denoiser": EMA1 weights, eval mode). Training never imports this
module: the train CLI builds the callbacks with ``make_eval_callbacks(cfg, ...)`` and passes them in.

- ``ShapesEval``: at the end of a run on ``shapes``, sample ``per_class`` images per class with the run's
  sampler and report the shapes metric (accuracy, colour/shape accuracy, mean IoU).
- ``FIDEval``: every N epochs (and at the end) sample ``num`` images and report FID (and IS) against
  reference statistics, through torch-fidelity's Inception with local weights (or an injected extractor).

Both sample through ``jitkit.diffusion.generate.generate_images`` in the training precision
(``info["precision"]``), so their images are the ones ``jitkit sample`` makes for the same seed.

Under torchrun every rank evaluates its share of the plan (image i on rank i mod world_size, drawn from the
noise of (seed, i), so the images do not depend on the number of ranks). ShapesEval gathers the images to
rank 0; FIDEval extracts the features of its own images on each rank and gathers the features. Rank 0 puts
them in plan order, computes the metric, prints it, appends it to ``RUN/eval.jsonl`` and returns the record
(also kept as ``.last``); the other ranks return None. Every rank makes the same collective calls (one
gather per evaluation), a rank without images too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jitkit.config import RunConfig, SamplerConfig
from jitkit.runtime import dist

if TYPE_CHECKING:
    from jitkit.eval.fidelity import FeatureExtractor

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


@dataclass(frozen=True)
class _Share:
    """Which rank of how many evaluates, and whether it is the one that writes."""

    rank: int
    world_size: int
    is_main: bool

    @classmethod
    def of(cls, info: dict[str, Any]) -> _Share:
        """From the callback's info (the engine's), else from the process group / torchrun environment."""
        rank = int(info["rank"]) if "rank" in info else dist.rank()
        world = int(info["world_size"]) if "world_size" in info else dist.env_world()[1]
        if not 0 <= rank < world:
            raise ValueError(f"info must have 0 <= rank < world_size, found rank={rank}, world_size={world}")
        if world > 1 and not dist.is_initialized():
            raise RuntimeError(
                f"info has world_size={world} but no process group is initialised: an evaluation split over "
                "ranks gathers its results. jitkit.train.train joins the group; code that calls the callback "
                "itself must call torch.distributed.init_process_group first"
            )
        return cls(rank, world, bool(info.get("is_main", rank == 0)))


def _in_plan_order(parts: list[tuple[list[int], dict[str, np.ndarray]]], n: int) -> dict[str, np.ndarray]:
    """The gathered ``(plan indices, {name: rows})`` of every rank as {name: [n, ...]} in plan order."""
    idx = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in parts]) if parts else np.zeros(0)
    if len(idx) != n or not np.array_equal(np.sort(idx), np.arange(n)):
        raise RuntimeError(
            f"the ranks' shares of an evaluation must cover plan indices 0..{n - 1} once each, found "
            f"{len(idx)} indices over {len(parts)} ranks (do all ranks pass the same plan and world_size?)"
        )
    full = [arrays for i, arrays in parts if len(i)]
    out = {k: np.empty((n, *v.shape[1:]), dtype=v.dtype) for k, v in full[0].items()}
    for i, arrays in parts:
        if len(i):
            for k, v in arrays.items():
                out[k][np.asarray(i, dtype=np.int64)] = v
    return out


class _SamplingEval:
    """What the evaluations share: sampling a share of the plan from the run's EMA1 Denoiser, the record.

    Subclasses set ``seed``, ``batch_size``, ``sampler`` (None: the run config's) and ``progress``.
    """

    seed: int
    batch_size: int
    sampler: SamplerConfig | None
    progress: bool
    last: dict[str, Any] | None = None

    def _sample(
        self, info: dict[str, Any], labels: np.ndarray, indices: list[int], **run: Any
    ) -> torch.Tensor:
        """uint8 images [n, C, S, S] of ``labels`` (plan indices ``indices``) in the training precision
        (``info["precision"]``, else the config's ``train.precision``, else fp32); ``run`` (progress, desc,
        on_batch) goes to :func:`jitkit.diffusion.generate.generate_images` as it is."""
        from jitkit.diffusion.generate import generate_images

        cfg: RunConfig | None = info.get("config")
        scfg = self.sampler or (cfg.sampler if cfg is not None else SamplerConfig())
        precision = info.get("precision") or (cfg.train.precision if cfg is not None else "fp32")
        den = info["denoiser"]
        return generate_images(
            den,
            labels,
            scfg,
            seed=self.seed,
            batch_size=self.batch_size,
            precision=precision,
            indices=indices,
            **run,
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
    """The shapes metric on ``per_class`` samples per class at the end of training (event "end").

    Called on every rank: each samples its share, rank 0 gathers the images, computes the metric, writes
    ``eval.jsonl`` and the grid, and returns the record; the other ranks return None.
    """

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
        if event not in self.events:
            return None
        from jitkit.data.shapes import class_names
        from jitkit.diffusion.generate import balanced_labels, rank_indices
        from jitkit.eval.shapes_metric import format_shapes_metrics, shapes_metrics
        from jitkit.images import save_grid

        share = _Share.of(info)
        names = class_names()
        labels = balanced_labels(len(names), per_class=self.per_class)
        t0 = time.time()
        idx = rank_indices(len(labels), share.rank, share.world_size)
        mine = self._sample(
            info, labels[idx], idx, progress=self.progress and share.is_main, desc="eval shapes"
        )
        parts = dist.gather_to_main((idx, {"images": mine.numpy()}))  # every rank, even one without images
        if parts is None or not share.is_main:
            return None
        images = torch.from_numpy(_in_plan_order(parts, len(labels))["images"])
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
    """FID/IS against reference statistics every ``every_epochs`` epochs (0: only at the end).

    Called on every rank: each samples its share of the ``num`` images and extracts their features (batch by
    batch, as they are made); rank 0 gathers the features in plan order, computes FID and IS, writes
    ``eval.jsonl`` and returns the record; the other ranks return None.

    ``extractor``: the feature extractor (see ``jitkit.eval.fidelity.FeatureExtractor``: uint8 images →
    {"2048": pool features, "logits_unbiased": logits}); default torch-fidelity's Inception from
    ``inception_weights``, built on each rank's device at the first evaluation. With an extractor given,
    torch-fidelity and the Inception weights are not needed, and ``ref_stats`` must come from it.
    """

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
        extractor: FeatureExtractor | None = None,
    ) -> None:
        from jitkit.eval.fid import load_stats
        from jitkit.eval.fidelity import find_inception_weights, import_torch_fidelity

        if num < 10:
            raise ValueError(f"num must be >= 10 (the Inception Score's 10 splits), found {num}")
        if extractor is not None and inception_weights is not None:
            raise ValueError("give either inception_weights or extractor, not both")
        # fail at start-up, not after hours of training
        self.ref = load_stats(ref_stats)
        self.weights = None
        if extractor is None:
            import_torch_fidelity()
            self.weights = find_inception_weights(inception_weights)
        self.ref_path = str(ref_stats)
        self.num, self.every, self.seed, self.batch_size = num, every_epochs, seed, batch_size
        self.sampler, self.at_end, self.progress = sampler, at_end, progress
        self._extractor = extractor

    def due(self, event: str, info: dict[str, Any]) -> bool:
        return fid_due(event, int(info.get("epoch") or 0), self.every, self.at_end)

    def __call__(self, event: str, info: dict[str, Any]) -> dict[str, Any] | None:
        if not self.due(event, info):
            return None
        from jitkit.diffusion.generate import balanced_labels, rank_indices
        from jitkit.eval.fidelity import InceptionFeatures, feature_arrays, image_metrics

        share = _Share.of(info)
        den = info["denoiser"]
        if self._extractor is None:
            self._extractor = InceptionFeatures(self.weights, next(den.parameters()).device)
        extractor = self._extractor
        t0 = time.time()
        labels = balanced_labels(den.num_classes, num=self.num)
        idx = rank_indices(len(labels), share.rank, share.world_size)
        chunks: dict[str, list[np.ndarray]] = {}

        def features(_bidx: list[int], images: torch.Tensor, _labels: np.ndarray) -> None:
            for k, v in feature_arrays(extractor, images).items():
                chunks.setdefault(k, []).append(v)

        progress = self.progress and share.is_main
        self._sample(info, labels[idx], idx, progress=progress, desc="eval FID", on_batch=features)
        mine = {k: np.concatenate(v) for k, v in chunks.items()}
        parts = dist.gather_to_main((idx, mine))  # every rank, even one without images
        if parts is None or not share.is_main:
            return None
        m = image_metrics(_in_plan_order(parts, len(labels)), self.ref, prc=False)
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
