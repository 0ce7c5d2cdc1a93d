"""The shapes study's figures and report: denoising trajectories, loss curves and ``report.md``.

Shape key: F kept sampler steps, K examples, C = 3 channels, S side; images uint8 [F, K, C, S, S].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.experiments.common import pyplot, save_figure

LOSS_EPOCHS = (1, 4, 8, 16, 24, 30)  # the epochs of the report's loss table
_LETTER = {"dit": "a", "jit": "b", "jit_long": "c", "unet": "d", "dit_xpred": "e", "jit_eps": "f"}
CHANCE_SHAPE = 0.25  # four shapes
SHAPE_NAMES = ("circle", "square", "triangle", "cross")


def save_trajectory_png(runs: list[tuple[str, list, torch.Tensor, torch.Tensor, str]], path: Path) -> Path:
    """Rows: for each run and each example, the state z and the predicted clean image x̂ at each kept step.

    ``runs``: (name, times or steps [F], states [F, K, C, S, S], predictions [F, K, C, S, S], unit) with unit
    ``"t"`` (flow time) or ``"step"`` (DDPM step; −1 is the output).
    """
    plt = pyplot()
    rows = []
    for name, ts, states, preds, unit in runs:
        for k in range(states.shape[1]):
            rows.append((f"{name}\nstate", ts, states[:, k], unit))
            rows.append((f"{name}\npredicted x", ts, preds[:, k], unit))
    ncol = max(r[2].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.05 * ncol + 0.9, 1.05 * len(rows)), squeeze=False)
    for r, (label, ts, imgs, unit) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= imgs.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(imgs[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            if r % 2 == 0:
                if unit == "t":
                    title = f"t={ts[c]:.2f}"
                else:
                    title = "output" if ts[c] < 0 else f"step {ts[c]}"
                ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.tight_layout(pad=0.3)
    return save_figure(fig, path, dpi=100)


def mosaic(imgs: np.ndarray, labels: np.ndarray, per_class: int, pad: int = 1) -> np.ndarray:
    """The first ``per_class`` images of every class as one picture, a row per class (uint8 [H, W, C]; the
    gaps black). ``imgs`` uint8 [N, C, S, S], ``labels`` [N]."""
    classes = np.unique(labels)
    C, S = imgs.shape[1], imgs.shape[-1]
    cell = S + pad
    out = np.zeros((len(classes) * cell + pad, per_class * cell + pad, C), dtype=np.uint8)
    for r, c in enumerate(classes):
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            out[pad + r * cell : pad + r * cell + S, pad + k * cell : pad + k * cell + S] = imgs[i].transpose(
                1, 2, 0
            )
    return out


def save_grids_png(
    panels: dict[str, tuple[np.ndarray, np.ndarray]], titles: dict[str, str], path: Path
) -> Path:
    """Every run's samples side by side (``panels``: run → (uint8 [N, C, S, S], labels [N])), 8 per class,
    a row per class, one panel per run titled ``titles[run]``."""
    plt = pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for ax, (key, (imgs, labels)) in zip(axes[0], panels.items()):
        ax.imshow(mosaic(imgs, labels, 8), interpolation="nearest")
        ax.set_title(titles.get(key, key), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.4)
    return save_figure(fig, path, dpi=110)


def save_loss_png(curves: dict[str, list[float]], path: Path) -> Path:
    """One log-scale curve of training loss per epoch for each run (``curves``: label → losses)."""
    fig, ax = pyplot().subplots(figsize=(5.5, 3.2))
    for name, h in curves.items():
        ax.plot(np.arange(1, len(h) + 1), h, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (own objective)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _fmt_loss(h: list[float], e: int) -> str:
    return f"{h[e - 1]:.4f}" if len(h) >= e else "—"


def report_order(keys: Any) -> list[str]:
    """Run names in the report's order (a) … (f), whatever order they ran in."""
    return sorted(keys, key=lambda k: _LETTER[k])


def per_shape_accuracy(metrics: dict[str, Any]) -> dict[str, float]:
    """Accuracy per shape (mean over the colours of the per-class accuracies; a class is ``<colour>_<shape>``)."""
    per: dict[str, list[float]] = {}
    for name, acc in metrics.get("per_class", {}).items():
        per.setdefault(name.rsplit("_", 1)[-1], []).append(float(acc))
    return {sh: float(np.mean(per[sh])) for sh in SHAPE_NAMES if sh in per}


def _verdict(ok: bool | None) -> str:
    return "**held**" if ok else ("not tested here" if ok is None else "**did not hold**")


def claims(results: dict[str, Any]) -> list[str]:
    """The study's claims and the 2×2's answer, each with the numbers that decide it (markdown bullets)."""
    runs, pub = results["runs"], results["published_dit"]
    m = {k: r["metrics"] for k, r in runs.items() if "metrics" in r}
    out: list[str] = []
    if "dit" in m:
        a, h = m["dit"], runs["dit"]["epoch_losses"]
        out.append(
            f'- "The DiT gets the colours right": {_verdict(a["color_accuracy"] >= 0.9)} — colour accuracy '
            f"{a['color_accuracy']:.3f}."
        )
        blurry = a["shape_accuracy"] >= 0.5
        out.append(
            f'- "... but blurry shapes" (recognisable shapes, shape accuracy ≥ 0.5): {_verdict(blurry)} — shape '
            f"accuracy {a['shape_accuracy']:.3f} (chance {CHANCE_SHAPE}), mean IoU {a['mean_iou']:.3f}"
            + ("." if blurry else ": the samples are patchwork, not blurry shapes (docs/experiments.md).")
        )
        if len(h) >= 30:
            close = abs(h[0] / pub["loss_epoch1"] - 1) < 0.1 and abs(h[29] / pub["loss_epoch30"] - 1) < 0.2
            out.append(
                f"- The published loss curve {pub['loss_epoch1']} → {pub['loss_epoch30']}: {_verdict(close)} "
                f"(within 10 % at epoch 1 and 20 % at epoch 30) — here {h[0]:.4f} → {h[29]:.4f}."
            )
    # judged on the runs that draw shapes (shape accuracy ≥ 0.3, above chance) and are not perfect
    per_shape = {k: per_shape_accuracy(v) for k, v in m.items()}
    drawing = {k: ps for k, ps in per_shape.items() if ps and 0.3 <= m[k]["shape_accuracy"] < 0.95}
    if drawing:
        hardest = {k: min(ps, key=ps.get) for k, ps in drawing.items()}
        out.append(
            '- "Crosses are the hardest" (in the runs that draw shapes, shape accuracy 0.3–0.95): '
            f"{_verdict(all(h == 'cross' for h in hardest.values()))} — "
            + "; ".join(f"{k}: hardest {hardest[k]} (cross {ps['cross']:.2f})" for k, ps in drawing.items())
            + "."
        )
    if "dit" in m and "unet" in m:
        a, d = m["dit"], m["unet"]
        sharper = d["mean_iou"] > a["mean_iou"] and d["shape_accuracy"] >= a["shape_accuracy"]
        out.append(
            f'- "A U-Net of the same parameter count would produce sharper samples": {_verdict(sharper)} — '
            f"mean IoU {d['mean_iou']:.3f} vs {a['mean_iou']:.3f}, shape accuracy {d['shape_accuracy']:.3f} vs "
            f"{a['shape_accuracy']:.3f} ({runs['unet']['params']:,} vs {runs['dit']['params']:,} parameters, "
            "same DDPM, recipe and sampler)."
        )
    if all(k in m for k in ("dit", "jit", "dit_xpred", "jit_eps")):
        acc = {k: m[k]["accuracy"] for k in ("dit", "jit", "dit_xpred", "jit_eps")}
        iou = {k: m[k]["mean_iou"] for k in acc}
        obj = ((acc["dit_xpred"] - acc["dit"]) + (acc["jit"] - acc["jit_eps"])) / 2
        arch = ((acc["jit_eps"] - acc["dit"]) + (acc["jit"] - acc["dit_xpred"])) / 2
        obj_iou = ((iou["dit_xpred"] - iou["dit"]) + (iou["jit"] - iou["jit_eps"])) / 2
        arch_iou = ((iou["jit_eps"] - iou["dit"]) + (iou["jit"] - iou["dit_xpred"])) / 2
        bigger = "the objective" if abs(obj) > abs(arch) else "the architecture"
        out.append(
            f"- Where JiT's lead comes from (2×2, accuracy): the objective (x-prediction, v-loss, Heun vs ε-DDPM) "
            f"moves accuracy by {obj:+.3f} on average over the two architectures (DiT {acc['dit']:.3f} → "
            f"{acc['dit_xpred']:.3f}, JiT {acc['jit_eps']:.3f} → {acc['jit']:.3f}), the architecture (JiT vs DiT) "
            f"by {arch:+.3f} over the two objectives (ε-DDPM {acc['dit']:.3f} → {acc['jit_eps']:.3f}, flow "
            f"{acc['dit_xpred']:.3f} → {acc['jit']:.3f}); mean IoU {obj_iou:+.3f} and {arch_iou:+.3f}. The larger "
            f"share: **{bigger}**."
        )
    return out


def shapes_report(results: dict[str, Any]) -> str:
    """``report.md`` of a results dict (as written to results.json by ``run_shapes_study``)."""
    cfg, runs = results["config"], results["runs"]
    keys = report_order(runs)
    pub = results["published_dit"]
    epochs_shown = [e for e in LOSS_EPOCHS if e <= cfg["epochs"]] or [cfg["epochs"]]
    lines = [
        "# Shapes study: DiT vs JiT vs U-Net, ε-prediction DDPM vs x-prediction flow (16×16, 16 classes)",
        "",
        f"Data: built-in `shapes`, {cfg['per_class']} images per class at {cfg['img_size']}×{cfg['img_size']}. "
        f"(a), (b), (d), (e), (f): AdamW lr {cfg['lr']}, wd {cfg['weight_decay']}, grad clip {cfg['grad_clip']}, cosine, "
        f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, raw weights sampled. Metrics: "
        f"{cfg['samples_per_class']} samples per class, shapes accuracy (colour and shape right) and mean best IoU. "
        f"{results['torch_threads']} torch threads; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in (results['load_average'] or []))}.",
        "",
        "| | " + " | ".join(f"({_LETTER[k]}) {runs[k]['title']}" for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
        "| parameters | " + " | ".join(f"{runs[k]['params']:,}" for k in keys) + " |",
        "| epochs (steps) | "
        + " | ".join(f"{len(runs[k]['epoch_losses'])} ({runs[k]['steps']})" for k in keys)
        + " |",
        "| training wall time | " + " | ".join(f"{runs[k]['train_seconds']:.1f} s" for k in keys) + " |",
        "| sampler (network evals per image) | "
        + " | ".join(f"{runs[k]['sampler']} ({runs[k]['nfe']})" for k in keys)
        + " |",
        "| shapes accuracy | " + " | ".join(f"{runs[k]['metrics']['accuracy']:.3f}" for k in keys) + " |",
        "| colour / shape accuracy | "
        + " | ".join(
            f"{runs[k]['metrics']['color_accuracy']:.3f} / {runs[k]['metrics']['shape_accuracy']:.3f}"
            for k in keys
        )
        + " |",
        "| mean IoU | " + " | ".join(f"{runs[k]['metrics']['mean_iou']:.3f}" for k in keys) + " |",
        "| per shape: circle / square / triangle / **cross** | "
        + " | ".join(
            " / ".join(
                (f"**{v:.2f}**" if sh == "cross" else f"{v:.2f}")
                for sh, v in per_shape_accuracy(runs[k]["metrics"]).items()
            )
            for k in keys
        )
        + " |",
        "",
        "Training loss per epoch (each model's own objective: ε-MSE for the DDPM, v-MSE for JiT — the two "
        "scales are not comparable with each other):",
        "",
        "| epoch | " + " | ".join(f"({_LETTER[k]}) {k}" for k in keys) + " | published DiT |",
        "|---:|" + "---:|" * (len(keys) + 1),
    ]
    for e in epochs_shown:
        pubv = {1: f"{pub['loss_epoch1']:.4f}", 30: f"{pub['loss_epoch30']:.4f}"}.get(e, "")
        lines.append(
            f"| {e} | " + " | ".join(_fmt_loss(runs[k]["epoch_losses"], e) for k in keys) + f" | {pubv} |"
        )
    lines += [
        "",
        f"Published DiT baseline: {pub['params']:,} parameters, loss {pub['loss_epoch1']} → {pub['loss_epoch30']}, "
        f"{pub['wall_seconds']} s on a CPU, blurry shapes with correct colours.",
        "",
    ]
    two = [k for k in ("dit", "dit_xpred", "jit_eps", "jit") if k in runs]
    if len(two) == 4:
        cell = {
            k: f"{runs[k]['metrics']['accuracy']:.3f} / {runs[k]['metrics']['mean_iou']:.3f}" for k in two
        }
        lines += [
            "Architecture × objective (accuracy / mean IoU):",
            "",
            "| | ε-prediction DDPM (the study's) | x-prediction, v-loss, Heun (JiT's) |",
            "|---|---:|---:|",
            f"| DiT (the study's) | (a) {cell['dit']} | (e) {cell['dit_xpred']} |",
            f"| JiT (same width and depth) | (f) {cell['jit_eps']} | (b) {cell['jit']} |",
            "",
        ]
    verdicts = claims(results)
    if verdicts:
        lines += ["## The study's claims here", "", *verdicts, ""]
    if "jit_long" in runs:
        r = runs["jit_long"]
        status = "reached" if r["reached_target"] else "did NOT reach"
        lines += [
            f"(c) {status} accuracy ≥ {cfg['target_accuracy']} and IoU ≥ {cfg['target_iou']} after {r['epochs']} "
            f"epochs ({r['steps']} steps, {r['train_seconds']:.0f} s of training).",
            "",
            "| epoch | train s | accuracy | mean IoU | loss |",
            "|---:|---:|---:|---:|---:|",
        ]
        for c in r["checks"]:
            lines.append(
                f"| {c['epoch']} | {c['train_seconds']:.0f} | {c['accuracy']:.3f} | {c['mean_iou']:.3f} | {c['loss']:.4f} |"
            )
        lines.append("")
    lines += ["All runs side by side (8 samples per class, a row per class):", "", "![grids](grids.png)", ""]
    for k in keys:
        lines += [f"({_LETTER[k]}) {runs[k]['title']}, one row per class:", "", f"![{k}](grid_{k}.png)", ""]
    lines += [
        "Denoising trajectories (rows: state and predicted clean image; ~10 evenly spaced sampler steps; "
        "DDPM steps count down from T−1, flow times t go from 0 (noise) to 1 (data)):",
        "",
        "![trajectory](trajectory.png)",
        "",
        "![losses](losses.png)",
        "",
    ]
    return "\n".join(lines)
