"""The toy-scale DiT study on ``shapes`` 16×16: a DiT ε-prediction DDPM baseline against JiT.

Runs (all on the same 3,200 images, 16 classes, same batches order given the seed):

(a) ``dit``:  the study's baseline — ``jitkit.models.dit.DiT`` (patch 4, width 64, depth 4, 4 heads,
    adaLN-Zero; 323,696 parameters) with ``jitkit.diffusion.ddpm`` (ε-prediction, linear β 1e-4 … 0.02 over
    T = 200, L_simple), ancestral sampling (T = 200 network evaluations).
(b) ``jit``:  a JiT of the same width and depth (patch 4, width 64, depth 4, 4 heads; bottleneck 32 and 4
    in-context tokens from block 2 as jitkit's tiny sizes) with x-prediction and the v-loss
    (``jitkit.diffusion.flow.Denoiser``), Heun sampling (``jitkit.diffusion.generate.sample_denoiser``).
(c) ``jit_long``: the same JiT trained for as long as it takes to draw crisp shapes (shapes accuracy
    ≥ 0.95 and mean IoU ≥ 0.9 on 16 samples per class), checked every ``long_check_every`` epochs.
(e) ``dit_xpred`` and (f) ``jit_eps``: architecture × objective (issue #20) — (a)'s DiT with (b)'s objective
    and sampler (:class:`DiTFlow`), and (b)'s JiT with (a)'s DDPM (:class:`JiTDDPM`); with (a) and (b) a
    2×2 that separates what the architecture does from what the objective does.
(d) ``unet``: the study's untested claim that "a U-Net of the same parameter count would produce sharper
    samples" (issue #20) — ``jitkit.models.unet.UNet`` (320,091 parameters, −1.1 % of the DiT's) in place
    of the DiT inside the very same DDPM, recipe and ancestral sampler as (a).

(a), (b), (d), (e) and (f) share the optimisation recipe of the study: AdamW (β = (0.9, 0.999)) lr 5e-4, weight decay 0,
gradient clipping at 1.0, cosine decay over the run updated every step (no warm-up), batch 128, 30 epochs,
random horizontal flips. The loop is ``fit`` below — a minimal loop over library pieces (the model's loss,
``jitkit.train.optim.make_optimizer``, ``jitkit.train.schedule.lr_at``); all three models go through the
same code, and samples are drawn from the raw weights (no EMA).

(c) goes through the library's trainer ``jitkit.train.train`` with the `jitkit train` shapes preset's recipe
(AdamW β = (0.9, 0.95), batch 64, lr 3e-3, 2 warm-up epochs, cosine over ``long_max_epochs``, clip 1.0, EMA
``ema_decay`` warmed up) with a callback that scores the EMA weights
every ``long_check_every`` epochs and stops the run (``StopTraining``) once the targets are met.

Figures and ``report.md``: :mod:`jitkit.experiments.shapes_report`.

Shape key: B batch, C = 3 channels, S = 16 side; images are uint8 [N, 3, S, S] or floats in [−1, 1].
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jitkit.config import DataConfig, DiffusionConfig, RunConfig, SamplerConfig, TrainConfig
from jitkit.experiments.common import machine_record, start_run
from jitkit.experiments.shapes_config import ShapesStudyConfig
from jitkit.experiments.shapes_report import (
    report_order,
    save_grids_png,
    save_loss_png,
    save_trajectory_png,
    shapes_report,
)
from jitkit.fileio import atomic_write_text

TRAJECTORY_CLASS = 10  # blue_triangle
PUBLISHED = {"params": 323_696, "loss_epoch1": 0.9147, "loss_epoch30": 0.1228, "wall_seconds": 42.7}


# --- the models as (loss, sampler) pairs ------------------------------------------------------------------


class DiTDDPM(nn.Module):
    """The DiT baseline with its DDPM: ``loss(x, y)`` and ``generate(noise, y, seed)``.

    ``net``: any ε-network (x_t, t, y) → ε̂ to train and sample with this DDPM instead of the study's DiT
    (the U-Net of :class:`UNetDDPM`); None builds the DiT from ``cfg``.
    """

    sampler_name = "DDPM ancestral"
    trajectory_unit = "step"  # trajectory frames are DDPM steps (−1: the output)

    def __init__(self, cfg: ShapesStudyConfig, net: nn.Module | None = None) -> None:
        super().__init__()
        from jitkit.diffusion.ddpm import DDPMSchedule

        self.net = study_dit(cfg) if net is None else net
        self.schedule = DDPMSchedule(cfg.ddpm_T, cfg.beta_start, cfg.beta_end)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.schedule.loss(self.net, x, y, generator=generator)

    @torch.no_grad()
    def generate(
        self, noise: torch.Tensor, y: torch.Tensor, seed: int, frames: list | None = None
    ) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1)
        return self.schedule.sample(self.net, noise, y, generator=g, trajectory=frames)

    @property
    def nfe(self) -> int:
        return self.schedule.T


def study_dit(cfg: ShapesStudyConfig, null_class: bool = False) -> nn.Module:
    """The study's DiT (323,696 parameters); ``null_class`` adds the classifier-free guidance row that JiT's
    objective trains with its label drop (+ ``cfg.dit_hidden`` parameters)."""
    from jitkit.models.dit import DiT, DiTConfig

    return DiT(
        DiTConfig(
            img_size=cfg.img_size,
            hidden_size=cfg.dit_hidden,
            depth=cfg.dit_depth,
            num_heads=cfg.dit_heads,
            num_classes=16,
            null_class=null_class,
        )
    )


class UNetDDPM(DiTDDPM):
    """(d): the study's U-Net (``cfg.unet_config()``) in the DiT's DDPM — same loss, schedule and sampler."""

    def __init__(self, cfg: ShapesStudyConfig) -> None:
        from jitkit.models.unet import UNet

        super().__init__(cfg, net=UNet(cfg.unet_config()))


class JiTDDPM(DiTDDPM):
    """``jit_eps``: (b)'s JiT network trained and sampled with the study's ε-prediction DDPM — the same loss,
    β schedule, T, recipe and ancestral sampler as (a). The JiT's output (its final linear layer, zero at
    initialisation like the DiT's) is read as ε̂ instead of x̂, and it receives the DDPM's integer step
    t ∈ {0 … T−1} through the same sinusoid as the DiT (both embed t with cos|sin of 10000^(−k/128)).
    The parameterisation allows it fully: only the meaning of the output and of t change."""

    def __init__(self, cfg: ShapesStudyConfig) -> None:
        from jitkit.models import build_model

        super().__init__(cfg, net=build_model(cfg.jit_model_config()))


class JiTFlow(nn.Module):
    """JiT + the flow objective (x-prediction, v-loss) and the Heun sampler; ``net``: another network in
    the same objective (the DiT of :class:`DiTFlow`)."""

    trajectory_unit = "t"  # trajectory frames are flow times

    def __init__(self, cfg: ShapesStudyConfig, net: nn.Module | None = None) -> None:
        super().__init__()
        from jitkit.diffusion.flow import Denoiser
        from jitkit.models import build_model

        net = build_model(cfg.jit_model_config()) if net is None else net
        self.denoiser = Denoiser(net, DiffusionConfig(pred="x", loss="v"), 16)
        self.sampler = cfg.jit_sampler()

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def sampler_name(self) -> str:
        return f"Heun {self.sampler.steps} steps"

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.denoiser.loss(x, y, generator=generator)

    @torch.no_grad()
    def generate(
        self, noise: torch.Tensor, y: torch.Tensor, seed: int, frames: list | None = None
    ) -> torch.Tensor:
        from jitkit.diffusion.generate import sample_denoiser
        from jitkit.diffusion.sampling import Trajectory

        traj = Trajectory() if frames is not None else None
        out = sample_denoiser(self.denoiser, noise, y, self.sampler, trajectory=traj)
        if frames is not None:
            for k in range(len(traj.x)):
                frames.append((traj.t[k], traj.z[k], traj.x[k]))
            frames.append((traj.t[-1], traj.z[-1], traj.z[-1]))
        return out

    @property
    def nfe(self) -> int:
        from jitkit.diffusion.sampling import network_evaluations

        return network_evaluations(self.sampler)


class DiTFlow(JiTFlow):
    """``dit_xpred``: the study's DiT trained and sampled with JiT's objective — x-prediction, the v-loss,
    logit-normal t, label drop 0.1, Heun — exactly as (b). The DiT gains the null-class row that label drop
    needs (+64 parameters) and receives the flow time t ∈ [0, 1] through its sinusoid, as the JiT does."""

    def __init__(self, cfg: ShapesStudyConfig) -> None:
        super().__init__(cfg, net=study_dit(cfg, null_class=True))


# --- the minimal training loop ---------------------------------------------------------------------------


@dataclass
class FitResult:
    epoch_losses: list[float]
    seconds: float
    steps: int


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: ShapesStudyConfig,
    *,
    desc: str = "train",
    progress: bool = True,
) -> tuple[FitResult, torch.optim.Optimizer]:
    """The study's recipe, read from ``cfg`` (epochs, batch_size, lr, weight_decay, grad_clip, seed, hflip):
    AdamW β = (0.9, 0.999) (``make_optimizer``), a cosine from ``lr`` to 0 over the run set every step
    (``lr_at`` without warm-up), gradient clipping (0: none), epochs of shuffled batches (last partial batch
    dropped), random horizontal flips. ``model.loss(x, y, generator)`` is the objective; images are uint8
    [N, 3, S, S]. Returns the result and the optimiser.
    """
    from tqdm import tqdm

    from jitkit.data import random_hflip, to_model_range
    from jitkit.train.optim import make_optimizer
    from jitkit.train.schedule import lr_at, set_lr

    epochs, batch_size, lr, grad_clip = cfg.epochs, cfg.batch_size, cfg.lr, cfg.grad_clip

    N = images.shape[0]
    steps_per_epoch = N // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the data set ({N} images)")
    opt = make_optimizer(model, lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=steps_per_epoch * epochs, desc=desc, unit="step", disable=not progress, leave=False)
    for ep in range(epochs):
        perm = torch.randperm(N, generator=g)
        total = 0.0
        for s in range(steps_per_epoch):
            step = ep * steps_per_epoch + s
            set_lr(opt, lr_at(step / steps_per_epoch, lr, warmup_epochs=0, epochs=epochs, schedule="cosine"))
            idx = perm[s * batch_size : (s + 1) * batch_size]
            x = to_model_range(images[idx])
            if cfg.hflip:
                x = random_hflip(x, generator=g)
            loss = model.loss(x, labels[idx], generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            total += loss.item()
            bar.update(1)
        losses.append(total / steps_per_epoch)
        bar.set_postfix(epoch=ep + 1, loss=f"{losses[-1]:.4f}")
    bar.close()
    return FitResult(losses, time.perf_counter() - t0, steps_per_epoch * epochs), opt


# --- sampling and scoring -------------------------------------------------------------------------------


def eval_labels(per_class: int) -> torch.Tensor:
    return torch.arange(16).repeat_interleave(per_class)


@torch.no_grad()
def generate(
    model: nn.Module, per_class: int, seed: int, img_size: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """per_class samples of each class → (uint8 [16·per_class, 3, S, S], labels, seconds)."""
    from jitkit.diffusion.sampling import initial_noise, to_uint8

    model.eval()
    y = eval_labels(per_class)
    noise = initial_noise(len(y), (3, img_size, img_size), 1.0, seed=seed)
    t0 = time.perf_counter()
    out = model.generate(noise, y, seed)
    return to_uint8(out), y, time.perf_counter() - t0


@torch.no_grad()
def trajectory_frames(model: nn.Module, classes: list[int], seed: int, img_size: int, n_frames: int) -> tuple:
    """Run the sampler on one image per class in ``classes`` and keep ~n_frames evenly spaced steps.

    Returns (times/steps [F], states uint8 [F, K, 3, S, S], predicted clean images uint8 [F, K, 3, S, S]).
    """
    from jitkit.diffusion.sampling import initial_noise, to_uint8

    model.eval()
    y = torch.tensor(classes)
    noise = initial_noise(len(y), (3, img_size, img_size), 1.0, seed=seed)
    frames: list = []
    model.generate(noise, y, seed, frames=frames)
    idx = np.unique(np.linspace(0, len(frames) - 1, n_frames).round().astype(int))
    ts = [frames[i][0] for i in idx]
    states = torch.stack([to_uint8(frames[i][1]) for i in idx])
    preds = torch.stack([to_uint8(frames[i][2].clamp(-1, 1)) for i in idx])
    return ts, states, preds


def _keep_samples(out: Path, key: str, imgs: torch.Tensor, y: torch.Tensor, classes: list[str]) -> str:
    """A run's scored samples as a standard sample folder OUT/samples/<key>/ (PNGs + labels.csv), so that
    ``jitkit eval --metric shapes`` or any other judge can score them again; returns its path under OUT."""
    from jitkit.eval.sample_folder import write_sample_folder

    write_sample_folder(out / "samples" / key, imgs, y, classes, overwrite=True, progress=False)
    return f"samples/{key}"


def _score(
    model, cfg: ShapesStudyConfig, seed: int
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, float]:
    from jitkit.eval.shapes_metric import shapes_metrics

    imgs, y, secs = generate(model, cfg.samples_per_class, seed, cfg.img_size)
    return shapes_metrics(imgs, y), imgs, y, secs


def run_shapes_study(
    cfg: ShapesStudyConfig,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train and compare (a) DiT-DDPM, (b) JiT, (c) JiT until crisp, (d) U-Net-DDPM and the 2×2's other corners
    (DiT with JiT's objective, JiT with the DDPM) — those in ``cfg.runs``;
    write figures, report.md, results.json.

    Files: ``grid_<run>.png`` for each run (one row per class), ``trajectory.png``, ``losses.png``,
    ``report.md``, ``results.json``.
    """
    from jitkit.data import build_dataset
    from jitkit.images import save_grid
    from jitkit.models.registry import count_params

    cfg.validate()
    if "unet" in cfg.runs:
        cfg.unet_config()  # an impossible U-Net fails here, before any training
    say = log or (lambda s: None)
    out = start_run(out, cfg.threads)
    ds = build_dataset(
        DataConfig(data="shapes", img_size=cfg.img_size, per_class=cfg.per_class, seed=cfg.seed, hflip=False)
    )
    images, labels, classes = ds.images, ds.labels, list(ds.classes)
    say(f"shapes: {len(labels)} images {cfg.img_size}x{cfg.img_size}, {len(classes)} classes")

    runs: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {}
    for key, ctor, title in (
        ("dit", DiTDDPM, "DiT ε-pred DDPM"),
        ("jit", JiTFlow, "JiT x-pred v-loss"),
        ("unet", UNetDDPM, "U-Net ε-pred DDPM"),
        ("dit_xpred", DiTFlow, "DiT x-pred v-loss"),
        ("jit_eps", JiTDDPM, "JiT ε-pred DDPM"),
    ):
        if key not in cfg.runs:
            continue
        torch.manual_seed(cfg.seed)
        model = ctor(cfg)
        res, _ = fit(model, images, labels, cfg, desc=key, progress=progress)
        metrics, imgs, y, secs = _score(model, cfg, cfg.seed + 99)
        save_grid(imgs, y, out / f"grid_{key}.png", classes)
        samples = _keep_samples(out, key, imgs, y, classes)
        runs[key] = {
            "samples": samples,
            "title": title,
            "params": count_params(model.net),
            "epoch_losses": res.epoch_losses,
            "train_seconds": round(res.seconds, 1),
            "steps": res.steps,
            "sampler": model.sampler_name,
            "nfe": model.nfe,
            "sample_seconds": round(secs, 2),
            "metrics": metrics,
        }
        models[key] = model
        say(
            f"{key}: {runs[key]['params']:,} params, loss {res.epoch_losses[0]:.4f} -> {res.epoch_losses[-1]:.4f}, "
            f"{res.seconds:.1f} s, accuracy {metrics['accuracy']:.3f}, IoU {metrics['mean_iou']:.3f}"
        )

    if "jit_long" in cfg.runs:
        runs["jit_long"], models["jit_long"] = _long_run(cfg, len(labels), classes, out, progress, say)

    # the denoising trajectories: one sample (the same class and noise for every run), ~10 evenly spaced steps
    ex = [TRAJECTORY_CLASS]
    traj_runs = []
    for key in models:
        ts, states, preds = trajectory_frames(
            models[key], ex, cfg.seed + 5, cfg.img_size, cfg.trajectory_frames
        )
        traj_runs.append((key, ts, states, preds, models[key].trajectory_unit))
    save_trajectory_png(traj_runs, out / "trajectory.png")
    save_loss_png({f"{k} ({v['title']})": v["epoch_losses"] for k, v in runs.items()}, out / "losses.png")
    # the grids side by side, read back from the sample folders every run wrote (the report's order)
    from jitkit.eval.sample_folder import read_sample_folder

    order = report_order(runs)
    save_grids_png(
        {k: read_sample_folder(out / runs[k]["samples"]) for k in order},
        {
            k: f"{k}: acc {runs[k]['metrics']['accuracy']:.2f}, IoU {runs[k]['metrics']['mean_iou']:.2f}"
            for k in order
        },
        out / "grids.png",
    )

    results = {
        "experiment": "shapes",
        "config": cfg.to_dict(),
        "published_dit": PUBLISHED,
        **machine_record(),
        "runs": runs,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "report.md", shapes_report(results))
    return results


def long_run_config(cfg: ShapesStudyConfig, out: Path) -> RunConfig:
    """The RunConfig of run (c): the study's JiT through ``jitkit.train.train`` (EMA, cosine, clip)."""
    return RunConfig(
        model=cfg.jit_model_config(),
        diffusion=DiffusionConfig(pred="x", loss="v"),
        sampler=cfg.long_sampler(),
        data=DataConfig(
            data="shapes", img_size=cfg.img_size, per_class=cfg.per_class, seed=cfg.seed, hflip=cfg.hflip
        ),
        train=TrainConfig(
            out=str(out / "jit_long_run"),
            epochs=cfg.long_max_epochs,
            batch_size=cfg.long_batch_size,
            lr=cfg.long_lr,
            schedule="cosine",
            warmup_epochs=cfg.long_warmup_epochs,
            ema_warmup=True,
            weight_decay=cfg.weight_decay,
            grad_clip=cfg.grad_clip,
            ema_decay1=cfg.ema_decay,
            ema_decay2=0.99,
            precision="fp32",
            device="cpu",
            seed=cfg.seed,
            log_every=25,
            keep_ckpts=1,
            eval_at_end=False,
        ),
    )


class _CrispnessCheck:
    """A ``jitkit.train.train`` callback: every ``long_check_every`` epochs, score the samples of the EMA
    denoiser; stop the run once accuracy and mean IoU reach the targets. Tracks training-only wall time."""

    def __init__(self, cfg: ShapesStudyConfig, say: Callable[[str], None]) -> None:
        self.cfg, self.say = cfg, say
        self.checks: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self._epoch_loss: list[float] = []
        self.eval_seconds = 0.0
        self.t0 = time.perf_counter()
        self.reached = False
        self.last: tuple | None = None

    def score(self, denoiser: nn.Module, epoch: int, step: int) -> tuple[dict[str, Any], float]:
        """Score ``denoiser`` (16 samples per class, (c)'s sampler), record the check and keep its samples as
        ``last``; the scoring time is excluded from the training time. Returns (metrics, training seconds)."""
        te = time.perf_counter()
        flow = _DenoiserView(denoiser, self.cfg.long_sampler())
        metrics, imgs, y, _ = _score(flow, self.cfg, self.cfg.seed + 99)
        self.eval_seconds += time.perf_counter() - te
        train_s = time.perf_counter() - self.t0 - self.eval_seconds
        self.checks.append(
            {
                "epoch": epoch,
                "step": step,
                "train_seconds": round(train_s, 1),
                "accuracy": metrics["accuracy"],
                "mean_iou": metrics["mean_iou"],
                "loss": self.losses[-1] if self.losses else float("nan"),
            }
        )
        self.last = (metrics, imgs, y, flow)
        return metrics, train_s

    def __call__(self, event: str, info: dict) -> None:
        from jitkit.train import StopTraining

        if event == "step":
            self._epoch_loss.append(float(info["loss"]))
            return
        if event != "epoch_end":
            return
        self.losses.append(float(np.mean(self._epoch_loss)) if self._epoch_loss else float("nan"))
        self._epoch_loss = []
        epoch = len(self.losses)
        if epoch % self.cfg.long_check_every and epoch < self.cfg.long_max_epochs:
            return
        metrics, train_s = self.score(info["denoiser"], epoch, int(info["step"]))
        self.say(
            f"jit_long: epoch {epoch}, {train_s:.0f} s of training, accuracy {metrics['accuracy']:.3f}, "
            f"IoU {metrics['mean_iou']:.3f}"
        )
        if metrics["accuracy"] >= self.cfg.target_accuracy and metrics["mean_iou"] >= self.cfg.target_iou:
            self.reached = True
            raise StopTraining("shapes targets reached")


class _DenoiserView(JiTFlow):
    """A trained Denoiser (e.g. the trainer's EMA) behind the study's generate() interface."""

    def __init__(self, denoiser: nn.Module, sampler: SamplerConfig) -> None:
        nn.Module.__init__(self)
        self.denoiser = copy.deepcopy(denoiser).eval()
        self.sampler = sampler


def _long_run(
    cfg: ShapesStudyConfig,
    n_images: int,
    classes: list[str],
    out: Path,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], nn.Module]:
    """(c) Train JiT with ``jitkit.train.train`` (one cosine schedule over ``long_max_epochs``), checking the
    EMA samples every ``long_check_every`` epochs and stopping at the first check that reaches the targets."""
    from jitkit.images import save_grid
    from jitkit.models.registry import count_params
    from jitkit.train import train

    rc = long_run_config(cfg, out)
    check = _CrispnessCheck(cfg, say)
    run_dir = train(rc, callbacks=[check], progress=progress)
    if check.last is None:  # interrupted before the first check: score the saved EMA weights
        from jitkit.checkpoint import load_denoiser

        den, _, _ = load_denoiser(run_dir, ema="1")
        epochs = len(check.losses)
        check.score(den, epochs, epochs * (n_images // cfg.long_batch_size))
    metrics, imgs, y, flow = check.last
    save_grid(imgs, y, out / "grid_jit_long.png", classes)
    samples = _keep_samples(out, "jit_long", imgs, y, classes)
    last = check.checks[-1]
    info = {
        "samples": samples,
        "title": f"JiT until crisp (jitkit train, batch {cfg.long_batch_size}, lr {cfg.long_lr}, EMA {cfg.ema_decay})",
        "params": count_params(flow.net),
        "epoch_losses": check.losses,
        "train_seconds": last["train_seconds"],
        "steps": last["step"],
        "epochs": last["epoch"],
        "reached_target": check.reached,
        "checks": check.checks,
        "run_dir": str(run_dir),
        "sampler": f"Heun {cfg.heun_steps} steps, CFG {cfg.long_cfg:g}",
        "nfe": flow.nfe,
        "metrics": metrics,
    }
    return info, flow
