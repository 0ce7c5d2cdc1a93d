"""The manifold toy of the JiT paper (its Figure 2; also published as a JAX notebook).

A 2-D swiss roll is embedded in D dimensions by a random column-orthonormal P [D, 2]. For every D an MLP
(4 hidden ReLU layers of width 256 on the input [z, t]) is trained three times, predicting x, ε or v, but
always with the *v-loss*:

    z = t·x + (1 − t)·e,   e ~ N(0, I_D),   t ~ U(0, 1) clipped to [t_min, t_max] = [0.01, 0.99]
    v = x − e
    x-prediction:  v̂ = (x̂ − z)/(1 − t)          ε-prediction:  v̂ = (z − ε̂)/t          v-prediction: v̂ = net
    loss = mean over batch and dimensions of (v̂ − v)²

Samples come from Euler steps of dz/dt = v̂(z, t) on an even grid from t_min to t_max (100 steps),
starting from z ~ N(0, I_D) at t_min, and are projected back to the plane by Pᵀ.

The conversions are ``jitkit.diffusion.flow.convert`` / ``flow_loss`` with ``t_eps = 1e-3``: since t is
clipped to [0.01, 0.99], neither 1 − t nor t ever falls below t_eps, so the clamps never act and the
formulas are exactly the notebook's (which has no clamp). DiffusionConfig is not used here because its
t_eps belongs to the image objective (0.05) and would change the toy.

The finding: x-prediction keeps its samples on the roll at every D (the network only has to output a point
of a 2-D manifold), while ε- and v-prediction must output a D-dimensional noise-like quantity and collapse
when D ≫ the network's capacity (D = 512 with width 256).

Speed: the three models of one D train *together* as one stacked MLP (weights [3, in, out], one batched
matmul per layer, each model with its own Adam state — Adam is elementwise, so this is exactly three
independent runs that see the same data batches and noise).

Shape key: M models (3), B batch, D ambient dimension, W width, n points.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jitkit.config import ConfigBase, ConfigError
from jitkit.diffusion.flow import convert, flow_loss, interpolate
from jitkit.experiments.common import machine_record, pyplot, save_figure, start_run
from jitkit.fileio import atomic_write_text, atomic_write_with

PRED_KINDS = ("x", "eps", "v")
PRED_LABELS = {"x": "x-prediction", "eps": "ε-prediction", "v": "v-prediction"}


@dataclass(frozen=True)
class ManifoldConfig(ConfigBase):
    """Every knob of the manifold toy (defaults: the paper's setup with a CPU-sized epoch budget)."""

    dims: tuple[int, ...] = (2, 8, 16, 32, 128, 512)
    preds: tuple[str, ...] = PRED_KINDS
    n: int = 10000
    noise: float = 0.5
    seed: int = 0
    epochs: int = 150  # the notebook: 2000 (on an accelerator); 150 fits ~8 minutes on 2 idle CPU cores
    batch_size: int = 1024
    lr: float = 1e-3
    width: int = 256
    hidden_layers: int = 4
    t_min: float = 0.01
    t_max: float = 0.99
    t_eps: float = 1e-3
    sample_steps: int = 100
    n_samples: int = 2000
    n_heldout: int = 2000
    threads: int = 0  # 0: leave torch's setting alone

    def validate(self) -> None:
        bad = [p for p in self.preds if p not in PRED_KINDS]
        if bad or not self.preds:
            raise ConfigError(f"preds must be a non-empty subset of {PRED_KINDS}, found {list(self.preds)}")
        if not self.dims or min(self.dims) < 2:
            raise ConfigError(f"dims must be ambient dimensions >= 2, found {list(self.dims)}")
        if not (0.0 < self.t_min < self.t_max < 1.0):
            raise ConfigError(f"need 0 < t_min < t_max < 1, found t_min={self.t_min}, t_max={self.t_max}")
        if not (0.0 < self.t_eps <= min(self.t_min, 1 - self.t_max)):
            raise ConfigError(
                f"t_eps must lie in (0, min(t_min, 1 - t_max)] = (0, {min(self.t_min, 1 - self.t_max)}] so that "
                f"the conversions are never clamped, found {self.t_eps}"
            )
        self.check_at_least(
            1, "n", "epochs", "batch_size", "width", "hidden_layers", "sample_steps", "n_samples", "n_heldout"
        )
        self.check_at_least(0, "noise")


QUICK = dict(
    dims=(2, 16), n=1024, epochs=3, batch_size=256, width=32, sample_steps=10, n_samples=256, n_heldout=256
)


class StackedMLP(nn.Module):
    """M independent MLPs [z, t] → out, evaluated together: h ← ReLU(h·W_l + b_l), W_l [M, in, out].

    Initialisation per model: LeCun normal weights (std 1/√in), zero biases.
    """

    def __init__(self, n_models: int, dim: int, width: int = 256, hidden_layers: int = 4) -> None:
        super().__init__()
        sizes = [dim + 1] + [width] * hidden_layers + [dim]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(n_models, a, b) / math.sqrt(a)) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(n_models, 1, b)) for b in sizes[1:]])
        self.n_models = n_models

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z [M, B, D], t [M, B] → [M, B, D]."""
        h = torch.cat([z, t.unsqueeze(-1).to(z.dtype)], dim=-1)  # [M,B,D+1]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return h


def v_loss(
    out: torch.Tensor,
    x: torch.Tensor,
    e: torch.Tensor,
    z: torch.Tensor,
    t: torch.Tensor,
    pred: str,
    t_eps: float,
) -> torch.Tensor:
    """The toy's loss: mean (v̂ − v)², v̂ converted from a ``pred`` output (``flow_loss`` with loss="v")."""
    return flow_loss(out, x, e, z, t, pred=pred, loss="v", t_eps=t_eps)


def train_models(
    data: torch.Tensor, cfg: ManifoldConfig, *, seed: int, progress: Any = None
) -> tuple[StackedMLP, list[list[float]]]:
    """Train len(cfg.preds) models on data [n, D] together. Returns the models and per-model epoch losses."""
    n, D = data.shape
    M = len(cfg.preds)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = StackedMLP(M, D, cfg.width, cfg.hidden_layers)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history: list[list[float]] = [[] for _ in range(M)]
    steps = math.ceil(n / cfg.batch_size)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        sums = torch.zeros(M)
        for s in range(steps):
            x = data[perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]]  # [B,D]
            B = x.shape[0]
            t = (torch.rand(B, generator=g)).clamp(cfg.t_min, cfg.t_max)  # [B]
            e = torch.randn(B, D, generator=g)
            z = interpolate(x, e, t)
            out = net(z.expand(M, B, D), t.expand(M, B))  # [M,B,D]
            losses = torch.stack([v_loss(out[m], x, e, z, t, p, cfg.t_eps) for m, p in enumerate(cfg.preds)])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # independent models: the sum's gradient is each model's own
            opt.step()
            sums += losses.detach() * B
            if progress is not None:
                progress.update(1)
        for m in range(M):
            history[m].append(float(sums[m] / n))
    return net, history


@torch.no_grad()
def euler_sample(
    net: StackedMLP, preds: tuple[str, ...], z0: torch.Tensor, cfg: ManifoldConfig
) -> torch.Tensor:
    """Euler steps of dz/dt = v̂ on t_k = t_min + (t_max − t_min)·k/steps from z0 [B, D] (shared by all models).

    Returns z at t_max for each model: [M, B, D].
    """
    M = len(preds)
    B = z0.shape[0]
    ts = torch.linspace(cfg.t_min, cfg.t_max, cfg.sample_steps + 1).tolist()
    z = z0.expand(M, *z0.shape).clone()
    for k in range(cfg.sample_steps):
        t = torch.full((B,), ts[k])
        out = net(z, t.expand(M, B))
        v = torch.stack([convert(out[m], p, "v", z[m], t, cfg.t_eps) for m, p in enumerate(preds)])
        z = z + (ts[k + 1] - ts[k]) * v
    return z


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    atomic_write_with(path, lambda f: np.savez_compressed(f, **arrays))


def plot_grid(
    data2d: np.ndarray,
    samples: dict[str, np.ndarray],
    dims: tuple[int, ...],
    preds: tuple[str, ...],
    path: Path,
    max_points: int = 2000,
    metrics: dict[str, dict[str, float]] | None = None,
) -> Path:
    """The rows-per-D figure: column 0 the data, then one scatter per prediction, all on the same axes.

    With ``metrics`` each sample panel is annotated with its mean nearest-neighbour distance and the share
    of samples that fall outside the (shared) frame.
    """
    lim = float(np.abs(data2d).max()) * 1.25
    ncol = 1 + len(preds)
    fig, axes = pyplot().subplots(len(dims), ncol, figsize=(2.3 * ncol, 2.3 * len(dims)), squeeze=False)
    d_show = data2d[:max_points]
    for r, D in enumerate(dims):
        cols = [("data", d_show)] + [(p, samples[f"D{D}_{p}"][:max_points]) for p in preds]
        for c, (name, pts) in enumerate(cols):
            ax = axes[r][c]
            ax.scatter(pts[:, 0], pts[:, 1], s=1.0, alpha=0.5, color="0.4" if name == "data" else "C0", lw=0)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if metrics is not None and name != "data":
                m = metrics[f"D{D}_{name}"]
                outside = float((np.abs(pts) > lim).any(axis=1).mean())
                note = f"NN {m['mean_nn_dist']:.3g}"
                if outside > 0.005:
                    note += f"\n{outside:.0%} off-frame"
                ax.text(
                    0.03,
                    0.03,
                    note,
                    transform=ax.transAxes,
                    fontsize=7,
                    va="bottom",
                    color="C3" if m["mean_nn_dist"] > 0.1 else "0.2",
                )
            if r == 0:
                ax.set_title("data" if name == "data" else PRED_LABELS[name], fontsize=10)
            if c == 0:
                ax.set_ylabel(f"D = {D}", fontsize=10)
    fig.suptitle("swiss roll in D dims, samples projected back by Pᵀ (v-loss for all)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_losses(
    histories: dict[str, list[float]], dims: tuple[int, ...], preds: tuple[str, ...], path: Path
) -> Path:
    """A panel per prediction kind with a log-scale v-loss curve per D (``histories``: ``D{D}_{pred}``)."""
    fig, axes = pyplot().subplots(1, len(preds), figsize=(3.6 * len(preds), 3.0), squeeze=False, sharey=True)
    for c, p in enumerate(preds):
        ax = axes[0][c]
        for D in dims:
            h = histories[f"D{D}_{p}"]
            ax.plot(np.arange(1, len(h) + 1), h, label=f"D={D}")
        ax.set_yscale("log")
        ax.set_title(PRED_LABELS[p], fontsize=10)
        ax.set_xlabel("epoch")
        if c == 0:
            ax.set_ylabel("v-loss")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def metrics_table(results: dict[str, Any], dims: tuple[int, ...], preds: tuple[str, ...]) -> str:
    """Markdown table: one row per D, per prediction the mean NN distance / off-manifold energy / SW."""
    head = "| D | " + " | ".join(f"{PRED_LABELS[p]}: NN dist · off-plane · SW₁" for p in preds) + " |"
    sep = "|---:|" + "---:|" * len(preds)
    rows = [head, sep]
    for D in dims:
        cells = []
        for p in preds:
            m = results["metrics"][f"D{D}_{p}"]
            off = m["off_manifold_energy"]
            off_s = "0" if off < 1e-12 else f"{off:.3g}"
            cells.append(f"{m['mean_nn_dist']:.3f} · {off_s} · {m['sliced_wasserstein']:.3f}")
        rows.append(f"| {D} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run_manifold(cfg: ManifoldConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train, sample, score and plot the whole toy into ``out``; returns the results dict (also results.json).

    Files: ``manifold.png`` (the rows × (1 + preds) figure), ``losses.png``, ``samples.npz`` (``D{D}_{pred}``
    [n_samples, 2] projected samples and ``data`` [n, 2]), ``results.json``, ``report.md``.
    """
    from tqdm import tqdm

    from jitkit.data.swissroll import SwissRoll
    from jitkit.eval.swissroll_metric import swissroll_metrics

    cfg.validate()
    out = start_run(out, cfg.threads)
    dims, preds = tuple(cfg.dims), tuple(cfg.preds)
    steps_per_model = cfg.epochs * math.ceil(cfg.n / cfg.batch_size)
    bar = tqdm(total=steps_per_model * len(dims), desc="manifold", unit="step", disable=not progress)
    samples: dict[str, np.ndarray] = {}
    histories: dict[str, list[float]] = {}
    metrics: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    data2d = None
    t_all = time.perf_counter()
    for D in dims:
        bar.set_postfix_str(f"D={D}")
        ds = SwissRoll(D, n=cfg.n, noise=cfg.noise, seed=cfg.seed)
        held = SwissRoll(D, n=cfg.n_heldout, noise=cfg.noise, seed=cfg.seed, point_seed=cfg.seed + 1)
        if data2d is None:
            data2d = ds.points2d
        data = torch.from_numpy(ds.data.astype(np.float32))
        t0 = time.perf_counter()
        net, hist = train_models(data, cfg, seed=cfg.seed * 1000 + D, progress=bar)
        t_train = time.perf_counter() - t0
        z0 = torch.randn(cfg.n_samples, D, generator=torch.Generator().manual_seed(cfg.seed + 7))
        t0 = time.perf_counter()
        zs = euler_sample(net, preds, z0, cfg).double().numpy()  # [M,n_samples,D]
        timings[f"D{D}"] = round(t_train + time.perf_counter() - t0, 2)
        for m, p in enumerate(preds):
            key = f"D{D}_{p}"
            histories[key] = hist[m]
            if not np.isfinite(zs[m]).all():  # a diverged model: keep the record, score it as failed
                zs[m] = np.nan_to_num(zs[m], nan=1e6, posinf=1e6, neginf=-1e6)
            samples[key] = (zs[m] @ ds.P).astype(np.float32)
            metrics[key] = swissroll_metrics(zs[m], ds.P, held.points2d)
        _write_outputs(out, cfg, data2d, samples, histories, metrics, timings, time.perf_counter() - t_all)
    bar.close()
    return json.loads((out / "results.json").read_text())


def _write_outputs(
    out: Path, cfg: ManifoldConfig, data2d, samples, histories, metrics, timings, wall
) -> None:
    """Write every output for the dimensions finished so far (called after each D, so an interrupted run
    still leaves a consistent, smaller result)."""
    preds = tuple(cfg.preds)
    done = tuple(sorted(D for D in cfg.dims if f"D{D}_{preds[0]}" in metrics))
    _atomic_savez(out / "samples.npz", **samples, data=data2d.astype(np.float32))
    plot_grid(data2d, samples, done, preds, out / "manifold.png", metrics=metrics)
    plot_losses(histories, done, preds, out / "losses.png")
    results = {
        "experiment": "manifold",
        "config": cfg.to_dict(),
        "dims_done": list(done),
        "complete": set(done) == set(cfg.dims),
        "steps_per_model": cfg.epochs * math.ceil(cfg.n / cfg.batch_size),
        "wall_seconds": round(wall, 1),
        "seconds_per_D": timings,
        **machine_record(),
        "metrics": metrics,
        "final_loss": {k: v[-1] for k, v in histories.items()},
        "loss_history": histories,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "report.md", manifold_report(results))


def replot_manifold(out: str | Path) -> Path:
    """Redraw ``manifold.png`` and ``report.md`` of a finished run from its samples.npz and results.json."""
    out = Path(out)
    for f in ("samples.npz", "results.json"):
        if not (out / f).is_file():
            raise FileNotFoundError(f"{out} holds no {f}; expected the folder of a finished manifold run")
    results = json.loads((out / "results.json").read_text())
    dims = tuple(results.get("dims_done", results["config"]["dims"]))
    preds = tuple(results["config"]["preds"])
    with np.load(out / "samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    plot_grid(arrays["data"], arrays, dims, preds, out / "manifold.png", metrics=results["metrics"])
    atomic_write_text(out / "report.md", manifold_report(results))
    return out / "manifold.png"


def manifold_report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    dims, preds = tuple(results.get("dims_done", cfg["dims"])), tuple(cfg["preds"])
    load = results.get("load_average")
    lines = [
        "# Manifold toy: x-, ε- and v-prediction with the v-loss",
        "",
        f"Swiss roll ({cfg['n']} points, noise {cfg['noise']} before the 1/10 scaling) embedded in D dimensions "
        f"by a random column-orthonormal P. MLP {cfg['hidden_layers']}×{cfg['width']} ReLU on [z, t], Adam lr "
        f"{cfg['lr']}, batch {cfg['batch_size']}, {cfg['epochs']} epochs ({results['steps_per_model']} steps) "
        f"per model; t ~ U clipped to [{cfg['t_min']}, {cfg['t_max']}]; {cfg['sample_steps']} Euler steps; "
        f"{cfg['n_samples']} samples per model. Wall time {results['wall_seconds']:.0f} s "
        f"({results['torch_threads']} torch threads"
        + (
            f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on this machine at the end"
            if load
            else ""
        )
        + ")."
        + ("" if results.get("complete", True) else f" **Partial run: only D = {list(dims)} finished.**"),
        "",
        "![samples](manifold.png)",
        "",
        "Metrics (samples projected by Pᵀ, against held-out roll points): mean nearest-neighbour distance, mean "
        "energy left outside the data plane ‖s − PPᵀs‖², sliced Wasserstein-1. Lower is better for all three.",
        "",
        metrics_table(results, dims, preds),
        "",
        "Final v-loss per model:",
        "",
        "| D | " + " | ".join(PRED_LABELS[p] for p in preds) + " |",
        "|---:|" + "---:|" * len(preds),
    ]
    for D in dims:
        lines.append(
            f"| {D} | " + " | ".join(f"{results['final_loss'][f'D{D}_{p}']:.4f}" for p in preds) + " |"
        )
    lines += ["", "![losses](losses.png)", ""]
    return "\n".join(lines)


def quick_config(**overrides: Any) -> ManifoldConfig:
    """A miniature of the toy that runs in seconds (used by the tests and ``--quick``); ``overrides`` as
    ``replace``."""
    return ManifoldConfig().replace(**{**QUICK, **overrides})


__all__ = [
    "ManifoldConfig",
    "StackedMLP",
    "euler_sample",
    "quick_config",
    "replot_manifold",
    "run_manifold",
    "train_models",
    "v_loss",
]
