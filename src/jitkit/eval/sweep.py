"""Sampler sweeps: sample a grid of settings from one fixed set of seeds, score each, pick the best.

``jitkit sweep`` is a thin layer over :func:`run_sweep`. A sweep folder holds

* ``sweep_meta.json`` — the request (checkpoint, weights, seed, labels, metric); resuming with another
  request is refused, as for a sample folder;
* ``results.jsonl`` — one line per finished setting (written after its grid, fsync'ed): a re-run skips
  the settings already there, so an interrupted sweep resumes where it stopped;
* ``grids/NNN-<setting>.png`` — each setting's images (one row per class);
* ``table.md`` / ``results.csv`` — every setting with its scores, best first; ``sweep.png`` — the score
  against the guidance scale, one line per solver/steps/grid/interval.

Every setting samples the same labels from the same per-image noise (``generate_images`` with one seed), so
the settings differ only in the sampler. :func:`apply_sampler` stores a setting as a run's default sampler.

Shape key: N images, C channels, S side.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.generate import generate_images
from jitkit.fileio import atomic_save_figure, atomic_write_text
from jitkit.images import save_grid

__all__ = [
    "SweepMetric",
    "apply_sampler",
    "best_row",
    "inception_metric",
    "run_sweep",
    "setting_key",
    "shapes_metric",
    "sweep_settings",
]

META_JSON = "sweep_meta.json"
RESULTS = "results.jsonl"


@dataclass(frozen=True)
class SweepMetric:
    """How a sweep scores images: ``score(images uint8 [N, C, S, S], labels [N]) -> {name: value}``; the
    setting with the best ``key`` wins (``higher_is_better``), ties broken by ``tie_key`` (same direction)."""

    name: str
    key: str
    higher_is_better: bool
    score: Callable[[np.ndarray, np.ndarray], dict[str, Any]]
    tie_key: str | None = None


def shapes_metric() -> SweepMetric:
    """The shapes data set's metric: class accuracy, ties broken by the mean IoU (sharpness)."""
    from jitkit.eval.shapes_metric import shapes_metrics

    def score(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        m = shapes_metrics(images, labels)
        return {k: m[k] for k in ("accuracy", "color_accuracy", "shape_accuracy", "mean_iou", "n")}

    return SweepMetric("shapes", "accuracy", True, score, tie_key="mean_iou")


def inception_metric(
    extractor: Any, which: str, ref: dict[str, np.ndarray] | None = None, *, k: int = 3, splits: int = 10
) -> SweepMetric:
    """FID (``which="fid"``, lower is better, needs ``ref`` mu/sigma), Inception Score (``"is"``) or
    precision/recall (``"pr"``: their harmonic mean ``f1`` decides; needs ``ref`` features)."""
    from jitkit.eval.fidelity import extract_features, image_metrics

    if which not in ("fid", "is", "pr"):
        raise ValueError(f"which must be one of fid, is, pr, found {which!r}")
    if which in ("fid", "pr") and ref is None:
        raise ValueError(f"metric {which} needs reference statistics (ref); make them with jitkit ref-stats")
    if which == "pr" and "features" not in ref:
        raise ValueError("metric pr needs reference statistics with features (ref['features'])")

    def score(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        t = torch.from_numpy(np.ascontiguousarray(images))
        batches = (t[i : i + 50] for i in range(0, len(t), 50))
        feats = extract_features(batches, extractor, len(t), progress=False)
        m = image_metrics(
            feats, ref if which != "is" else None, isc=which == "is", prc=which == "pr", k=k, splits=splits
        )
        if which == "pr":
            p, r = m.get("precision", 0.0), m.get("recall", 0.0)
            m["f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        return m

    key = {"fid": "fid", "is": "inception_score", "pr": "f1"}[which]
    return SweepMetric(which, key, which != "fid", score)


def sweep_settings(
    base: SamplerConfig,
    *,
    cfgs: Sequence[float] | None = None,
    intervals: Sequence[tuple[float, float]] | None = None,
    methods: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    time_grids: Sequence[str] | None = None,
) -> list[SamplerConfig]:
    """Every combination of the given values (None: the base's), in a stable order (cfg varies fastest);
    each setting is validated (unknown solver or grid names, non-finite numbers are refused)."""
    out = []
    for m in methods or [base.method]:
        for k in steps or [base.steps]:
            for g in time_grids or [base.time_grid]:
                for iv in intervals or [tuple(base.interval)]:
                    for c in cfgs or [base.cfg]:
                        out.append(
                            base.replace(
                                method=m, steps=int(k), time_grid=g, interval=tuple(iv), cfg=float(c)
                            )
                        )
    return out


def setting_key(s: SamplerConfig) -> str:
    """A stable id of a setting: ``dpm++2m-10-uniform-cfg3-int0-1``."""
    lo, hi = s.interval
    return f"{s.method}-{s.steps}-{s.time_grid}-cfg{s.cfg:g}-int{lo:g}-{hi:g}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _read_results(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a partial last line from a kill: that setting runs again
                continue
    return rows


def _append_line(path: Path, record: dict[str, Any]) -> None:
    import os

    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rank(
    r: dict[str, Any], key: str, higher_is_better: bool, tie_key: str | None
) -> tuple[float, float, float]:
    """Larger is better: the score, then the tie-breaker, then fewer network evaluations."""
    sign = 1.0 if higher_is_better else -1.0
    v = r.get(key)
    v = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf * sign
    tie = r.get(tie_key, 0.0) if tie_key else 0.0
    return (sign * v, sign * (tie if isinstance(tie, (int, float)) else 0.0), -r.get("nfe", 0))


def best_row(
    rows: Sequence[dict[str, Any]], key: str, higher_is_better: bool, tie_key: str | None = None
) -> dict[str, Any]:
    """The row with the best ``key`` (finite values only), ties broken by ``tie_key`` then by fewer network
    evaluations."""
    ok = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not ok:
        raise ValueError(f"no setting has a finite {key!r}; nothing to choose from")
    return max(ok, key=lambda r: _rank(r, key, higher_is_better, tie_key))


def run_sweep(
    denoiser: torch.nn.Module,
    settings: Sequence[SamplerConfig],
    labels: Sequence[int] | np.ndarray,
    metric: SweepMetric,
    out_dir: str | Path,
    *,
    classes: Sequence[str],
    seed: int = 0,
    batch_size: int = 16,
    precision: str = "fp32",
    meta: dict[str, Any] | None = None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any], bool], None] | None = None,
) -> dict[str, Any]:
    """Sample ``labels`` with every setting, score with ``metric``, write the folder described above; return
    ``{"rows": [...], "best": row, "out": path}``. Settings already in ``results.jsonl`` are not sampled again.
    ``on_row(row, reused)`` after each setting."""
    from jitkit.diffusion.sampling import network_evaluations

    if not settings:
        raise ValueError("settings is empty: nothing to sweep")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"a sweep folder is a folder, found a file: {out}")
    (out / "grids").mkdir(parents=True, exist_ok=True)
    request = dict(meta or {})
    request.update(
        {"seed": seed, "num_images": len(y), "labels_sha": _digest(y.tolist()), "metric": metric.name}
    )
    mp = out / META_JSON
    if mp.is_file():
        old = json.loads(mp.read_text())
        diff = {k: (old.get(k), v) for k, v in request.items() if old.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: folder has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds a sweep of a different request ({lines}); use the same options to resume, or "
                "choose another folder"
            )
    else:
        atomic_write_text(mp, json.dumps(request, indent=2, sort_keys=True) + "\n")
    done = {r["key"]: r for r in _read_results(out / RESULTS) if "key" in r}
    rows: list[dict[str, Any]] = []
    for i, s in enumerate(settings):
        key = setting_key(s)
        if key in done:
            rows.append(done[key])
            if on_row is not None:
                on_row(done[key], True)
            continue
        t0 = time.perf_counter()
        images = generate_images(
            denoiser, y, s, seed=seed, batch_size=batch_size, precision=precision, progress=progress, desc=key
        ).numpy()
        seconds = time.perf_counter() - t0
        grid = out / "grids" / f"{i:03d}-{_slug(key)}.png"
        save_grid(images, y, grid, list(classes))
        row = {
            "key": key,
            **s.to_dict(),
            "nfe": network_evaluations(s),
            "seconds": round(seconds, 3),
            "grid": str(grid.relative_to(out)),
            **metric.score(images, y),
        }
        _append_line(out / RESULTS, row)
        rows.append(row)
        if on_row is not None:
            on_row(row, False)
    best = best_row(rows, metric.key, metric.higher_is_better, metric.tie_key)
    _write_table(out, rows, metric, best)
    _plot(out / "sweep.png", rows, metric, best)
    return {"rows": rows, "best": best, "out": str(out)}


def _write_table(out: Path, rows: list[dict[str, Any]], metric: SweepMetric, best: dict[str, Any]) -> None:
    cols = ["method", "steps", "time_grid", "cfg", "interval", "nfe"]
    scores = [k for k in rows[0] if k not in {*cols, "key", "grid", "seconds", "per_class"}]
    ordered = sorted(
        rows, key=lambda r: _rank(r, metric.key, metric.higher_is_better, metric.tie_key), reverse=True
    )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*cols, *scores, "seconds", "grid"])
    for r in ordered:
        w.writerow([r.get(c) for c in cols] + [r.get(k) for k in scores] + [r.get("seconds"), r.get("grid")])
    atomic_write_text(out / "results.csv", buf.getvalue())

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [
        f"# Sampler sweep ({metric.name}: {'higher' if metric.higher_is_better else 'lower'} {metric.key} is better)",
        "",
        f"Best: **{best['key']}** ({metric.key} {fmt(best[metric.key])}).",
        "",
        "| " + " | ".join([*cols, *scores]) + " |",
        "|" + "---|" * (len(cols) + len(scores)),
    ]
    for r in ordered:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in [*cols, *scores]) + " |")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")


def _plot(path: Path, rows: list[dict[str, Any]], metric: SweepMetric, best: dict[str, Any]) -> None:
    """The score (and the tie-breaker, when the metric has one) against cfg, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = [metric.key] + ([metric.tie_key] if metric.tie_key else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            v = r.get(key)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            lo, hi = r["interval"]
            label = f"{r['method']} {r['steps']} steps, {r['time_grid']}, interval [{lo:g}, {hi:g}]"
            series.setdefault(label, []).append((float(r["cfg"]), float(v)))
        for label, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if isinstance(best.get(key), (int, float)):
            ax.scatter(
                [best["cfg"]], [best[key]], s=160, facecolors="none", edgecolors="k", zorder=5, label="best"
            )
        ax.set_xlabel("guidance scale (cfg)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    direction = "higher" if metric.higher_is_better else "lower"
    tie = f", ties by {metric.tie_key}" if metric.tie_key else ""
    fig.suptitle(f"sampler sweep: {metric.name} ({direction} {metric.key} is better{tie})", fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def apply_sampler(checkpoint: str | Path, sampler: SamplerConfig, *, reason: str = "") -> dict[str, Any]:
    """Make ``sampler`` the default sampler of a checkpoint (its meta.json's config, rewritten atomically) and
    of its run (RUN/config.json when present); append the previous and new settings to RUN/log.jsonl.
    Returns the previous sampler settings."""
    from jitkit.checkpoint import resolve_checkpoint_path
    from jitkit.checkpoint.layout import META_FILE
    from jitkit.checkpoint.load import checkpoint_meta

    ckpt = resolve_checkpoint_path(checkpoint)
    meta = checkpoint_meta(ckpt)
    if "config" not in meta:
        raise ValueError(f"checkpoint {ckpt}: meta.json has no config; it was not written by jitkit")
    previous = dict(meta["config"].get("sampler", {}))
    meta["config"]["sampler"] = sampler.to_dict()
    atomic_write_text(ckpt / META_FILE, json.dumps(meta, indent=1) + "\n")
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    if run is not None and (run / "config.json").is_file():
        cfg = json.loads((run / "config.json").read_text())
        if isinstance(cfg, dict) and "sampler" in cfg:
            cfg["sampler"] = sampler.to_dict()
            atomic_write_text(run / "config.json", json.dumps(cfg, indent=2) + "\n")
    if run is not None:
        _append_line(
            run / "log.jsonl",
            {
                "event": "sampler-default",
                "step": int(meta.get("step", 0)),
                "checkpoint": ckpt.name,
                "previous": previous,
                "sampler": sampler.to_dict(),
                "reason": reason,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    return previous
