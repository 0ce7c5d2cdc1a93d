"""Why the shapes study's toy DiT draws 4×4-patch patchwork: train it at the study's budget with one change at a
time and record what each change does.

For every variant the probe trains :class:`~jitkit.experiments.shapes_study.DiTDDPM` with the study's own loop
(:func:`~jitkit.experiments.shapes_study.fit`, 30 epochs of batch 128 by default) and scores its samples as the
study does (:func:`~jitkit.experiments.shapes_study._score`: 16 ancestral samples per class, the shapes metric).
It records

* the first and last epoch's ε-loss;
* accuracy, colour / shape accuracy and mean IoU of the samples;
* the attention entropy of every block (mean over heads, queries and a fixed probe batch of the softmax
  entropy, divided by log N: 1 is uniform attention, 0 one-hot) at a few points of training;
* the cross-patch ratio at the end: how much perturbing one input patch moves the *other* patches' outputs,
  relative to how much it moves its own (≈ 0: the tokens do not talk to each other).

A variant changes one thing: a ShapesStudyConfig field (the β schedule), the network after construction (the
position table), or a function for the duration of the run (monkeypatched, then restored). Sample-time-only
changes (the sampler's variance, the position table zeroed after training) are extra rows scored on the same
trained weights.

``python -m jitkit.experiments.dit_probe --out runs/dit_probe [--variants baseline,pos_zero] [--quick]``
writes ``results.json``, ``results.md`` (the table) and ``grid_<variant>.png``.

Shape key: B batch, H heads, N tokens, h head width, D width; attention maps are [B, H, N, N].
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from jitkit.experiments.shapes_config import ShapesStudyConfig, quick_config
from jitkit.fileio import atomic_write_text

# --- attention statistics -------------------------------------------------------------------------------


def attention_entropy(attn: torch.Tensor) -> float:
    """Mean softmax entropy of attention maps ``attn`` [..., N_q, N_k] (rows sum to 1), divided by log N_k:
    1.0 for uniform rows, 0.0 for one-hot rows."""
    n_k = attn.shape[-1]
    if n_k < 2:
        raise ValueError(f"attention entropy needs at least 2 keys, found {n_k}")
    p = attn.double()
    ent = -torch.special.xlogy(p, p).sum(-1)  # [..., N_q]; 0·log 0 = 0
    return float(ent.mean() / math.log(n_k))


@torch.no_grad()
def attention_maps(net: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The softmax attention [B, H, N, N] of every ``DiTAttention`` of ``net`` on (x, t, y), recomputed from
    each layer's input with SDPA's scale 1/√h."""
    from jitkit.models.dit import DiTAttention

    maps: list[torch.Tensor] = []

    def hook(mod: DiTAttention, args: tuple, _out: torch.Tensor) -> None:
        (inp,) = args
        B, N, D = inp.shape
        qkv = mod.qkv(inp).view(B, N, 3, mod.heads, D // mod.heads).permute(2, 0, 3, 1, 4)  # [3,B,H,N,h]
        q, k = qkv[0], qkv[1]
        maps.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1))  # [B,H,N,N]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, DiTAttention)]
    was_training = net.training
    net.eval()
    try:
        net(x, t, y)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return maps


def layer_entropies(net: nn.Module, probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> list[float]:
    """:func:`attention_entropy` of each block on the probe batch (x_t, t, y)."""
    return [round(attention_entropy(a), 4) for a in attention_maps(net, *probe)]


@torch.no_grad()
def cross_patch_ratio(net: nn.Module, probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
    """Perturb one input patch (each of a few positions in turn) and return mean |Δε̂| per pixel outside the
    patch divided by mean |Δε̂| per pixel inside it; 0 when the tokens ignore each other."""
    x, t, y = probe
    p, S = net.cfg.patch_size, net.cfg.img_size
    G = S // p
    base = net(x, t, y)
    g = torch.Generator().manual_seed(1)
    ratios = []
    for i, j in ((0, 0), (G // 2, G // 2), (G - 1, 1)):
        mask = torch.zeros(1, 1, S, S, dtype=torch.bool)
        mask[..., i * p : (i + 1) * p, j * p : (j + 1) * p] = True
        dx = 0.5 * torch.randn(x.shape, generator=g) * mask
        d = (net(x + dx, t, y) - base).abs()
        inside = d.masked_select(mask.expand_as(d)).mean()
        outside = d.masked_select(~mask.expand_as(d)).mean()
        ratios.append(float(outside / inside.clamp_min(1e-12)))
    return round(sum(ratios) / len(ratios), 6)


def _probe_images(
    images: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probe's (x0 in [−1, 1], noise e, labels): the first ``per_class`` training images of each class and
    noise from its own generator (the training draws are untouched)."""
    from jitkit.data import to_model_range

    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()])
    x0 = to_model_range(images[idx])
    return x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)), labels[idx]


def probe_batch(
    images: torch.Tensor, labels: torch.Tensor, T: int, schedule: Any, per_class: int = 4, seed: int = 123
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed batch (x_t, t, y): ``per_class`` training images of each class noised at steps spread evenly
    over [0, T)."""
    x0, e, y = _probe_images(images, labels, per_class, seed)
    t = torch.linspace(0, T - 1, len(y)).round().long()
    return schedule.q_sample(x0, t, e), t, y


def flow_probe_batch(
    images: torch.Tensor, labels: torch.Tensor, per_class: int = 4, seed: int = 123
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`probe_batch` for the flow objective: (z_t, t, y) with z_t = t·x + (1 − t)·e, t spread evenly
    over [0.02, 0.98] (the flow's t = 1 is the data)."""
    from jitkit.diffusion.flow import interpolate

    x0, e, y = _probe_images(images, labels, per_class, seed)
    t = torch.linspace(0.02, 0.98, len(y))
    return interpolate(x0, e, t), t, y


# --- the variants ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One change against the study's recipe.

    ``cfg``: ShapesStudyConfig fields to replace; ``setup(model)``: edits the freshly built DiTDDPM;
    ``patch()``: a context manager active for the whole run (training and sampling); ``extra``: sample-time
    rows scored on the trained weights, name → (variance of the sampler, edit of a copy of the net or None).
    ``objective``: ``"ddpm"`` (the study's ε-prediction DDPM) or ``"flow"`` (the same DiT with JiT's
    x-prediction, v-loss and Heun, :class:`~jitkit.experiments.shapes_study.DiTFlow`; its probe batch is
    z_t = t·x + (1 − t)·e at t spread over [0.02, 0.98], its cross-patch ratio is measured on x̂).
    """

    name: str
    what: str
    cfg: dict[str, Any] = field(default_factory=dict)
    setup: Callable[[nn.Module], None] | None = None
    patch: Callable[[], contextlib.AbstractContextManager] | None = None
    extra: dict[str, tuple[str, Callable[[nn.Module], None] | None]] = field(default_factory=dict)
    objective: str = "ddpm"


def _zero_pos(model: nn.Module) -> None:
    """Position table zeroed and frozen: the network sees no position at all."""
    model.net.pos_embed.data.zero_()
    model.net.pos_embed.requires_grad_(False)


def _fixed_pos(model: nn.Module) -> None:
    """The 2-D sin-cos position table kept fixed (DiT's own choice: a parameter with requires_grad=False, so
    the parameter count is the same) instead of learned."""
    model.net.pos_embed.requires_grad_(False)


def _randn_pos(model: nn.Module) -> None:
    """Learned position table started at N(0, 1) (a ViT-style random table, every coordinate position-specific)
    instead of the 2-D sin-cos table. Drawn from its own generator: the other weights stay the same."""
    g = torch.Generator().manual_seed(7)
    model.net.pos_embed.data.copy_(torch.randn(model.net.pos_embed.shape, generator=g))


def _pos_scaled(factor: float) -> Callable[[nn.Module], None]:
    def setup(model: nn.Module) -> None:
        model.net.pos_embed.data.mul_(factor)

    setup.__doc__ = f"the 2-D sin-cos position table times {factor:g}"
    return setup


def _timestep_times(factor: float) -> Callable[[], contextlib.AbstractContextManager]:
    """Feed the network factor·t instead of t (e.g. 1000/T: DiT's 0…1000 range; 1/T: t in [0, 1))."""
    import jitkit.models.dit as dit

    orig = dit.timestep_embedding

    def emb(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        return orig(t.float() * factor, dim, max_period)

    return lambda: mock.patch.object(dit, "timestep_embedding", emb)


def _lr_per_epoch() -> contextlib.AbstractContextManager:
    """The cosine evaluated at whole epochs (stepped once per epoch) instead of every step."""
    import jitkit.train.schedule as sched

    orig = sched.lr_at

    def lr_at(epoch: float, lr: float, **kw: Any) -> float:
        return orig(math.floor(epoch + 1e-9), lr, **kw)

    return mock.patch.object(sched, "lr_at", lr_at)


def _zero_pos_copy(net: nn.Module) -> None:
    net.pos_embed.data.zero_()


def _qkv_split_init(model: nn.Module) -> None:
    """q, k and v each initialised as its own D×D xavier-uniform matrix (bound √(6/2D)) instead of one 3D×D
    matrix (bound √(6/4D): DiT's init of the fused layer gives q and k √2 smaller weights, so q·k starts 2×
    smaller). Drawn from its own generator; the other weights stay the same."""
    from jitkit.models.dit import DiTAttention

    g = torch.Generator().manual_seed(11)
    for m in model.net.modules():
        if isinstance(m, DiTAttention):
            D = m.qkv.weight.shape[1]
            bound = math.sqrt(6.0 / (2 * D))
            with torch.no_grad():
                m.qkv.weight.copy_((torch.rand(m.qkv.weight.shape, generator=g) * 2 - 1) * bound)


def _attention_scale(factor: float) -> Callable[[], contextlib.AbstractContextManager]:
    """Attention logits multiplied by ``factor`` (SDPA's scale factor/√h instead of 1/√h): a sharper softmax
    at the same weights, so that q·k differences reach the attention pattern sooner."""
    import jitkit.models.dit as dit

    class _F:
        def __getattr__(self, name: str) -> Any:
            return getattr(torch.nn.functional, name)

        @staticmethod
        def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, scale=factor / math.sqrt(q.shape[-1])
            )

    return lambda: mock.patch.object(dit, "F", _F())


def _cosine_schedule(model: nn.Module) -> None:
    """Nichol & Dhariwal's cosine ᾱ over the same T in place of the linear β (ᾱ_T ≈ 0: every noise level up
    to pure noise is trained, and more of the steps sit at high noise than with the linear β)."""
    from jitkit.diffusion.ddpm import DDPMSchedule

    old = model.schedule
    model.schedule = DDPMSchedule(old.T, old.beta_start, old.beta_end, kind="cosine")


def _data_unit_range() -> contextlib.AbstractContextManager:
    """Images in [0, 1] (``ToTensor`` without the usual normalisation) instead of [−1, 1] for training, and the
    samples mapped back by 2x − 1 for scoring. The background is then 0, not −1: the signal left at t = T
    (√ᾱ_T·x, ᾱ_T = 0.13) is far closer to the pure noise the sampler starts from."""
    import jitkit.data as data
    from jitkit.experiments.shapes_study import DiTDDPM

    orig_range, orig_generate = data.to_model_range, DiTDDPM.generate

    def unit(u8: torch.Tensor) -> torch.Tensor:
        return (orig_range(u8) + 1.0) / 2.0

    def generate(self, *a: Any, **kw: Any) -> torch.Tensor:
        return orig_generate(self, *a, **kw) * 2.0 - 1.0

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(data, "to_model_range", unit))
    stack.enter_context(mock.patch.object(DiTDDPM, "generate", generate))
    return stack


def variants(cfg: ShapesStudyConfig) -> dict[str, Variant]:
    """The probe's variants, keyed by name (the study's recipe is ``baseline``)."""
    T = cfg.ddpm_T
    scale = 1000.0 / T  # Ho et al.'s β 1e-4 … 0.02 are for T = 1000
    bscale = min(scale, 0.5 / cfg.beta_end)  # (a miniature's tiny T would push β past 1)
    vs = [
        Variant(
            "baseline",
            "the study's recipe as jitkit runs it",
            extra={
                "baseline, β_t sampler": ("beta", None),
                "baseline, DDIM (η = 0) sampler": ("ddim", None),
                "baseline, x̂_0 clipped to [−1, 1] (diffusers' DDPM default)": ("clipped", None),
                "baseline, position zeroed at sampling": ("posterior", _zero_pos_copy),
            },
        ),
        Variant("pos_zero", "position table zero and frozen (ablation)", setup=_zero_pos),
        Variant("pos_fixed", "sin-cos position table fixed, as in DiT (not learned)", setup=_fixed_pos),
        Variant(
            "pos_randn", "learned position table started at N(0, 1) instead of sin-cos", setup=_randn_pos
        ),
        Variant("pos_x4", "sin-cos position table × 4", setup=_pos_scaled(4.0)),
        Variant(
            "beta_scaled",
            f"β {cfg.beta_start * bscale:g} … {cfg.beta_end * bscale:g} (Ho et al.'s endpoints scaled to T = {T})",
            cfg={"beta_start": cfg.beta_start * bscale, "beta_end": cfg.beta_end * bscale},
        ),
        Variant(
            "t_1000", "timestep fed as t·1000/T (DiT's range) instead of t", patch=_timestep_times(scale)
        ),
        Variant("t_unit", "timestep fed as t/T ∈ [0, 1)", patch=_timestep_times(1.0 / T)),
        Variant("lr_per_epoch", "cosine learning rate stepped per epoch, not per step", patch=_lr_per_epoch),
        Variant(
            "qkv_split_init",
            "q, k, v initialised as three xavier matrices (√2 larger)",
            setup=_qkv_split_init,
        ),
        Variant("attn_scale_x4", "attention logits × 4 (SDPA scale 4/√h)", patch=_attention_scale(4.0)),
        Variant(
            "cosine_beta",
            f"cosine ᾱ schedule (Nichol & Dhariwal) over the same T = {T}",
            setup=_cosine_schedule,
        ),
        Variant(
            "data_01", "images in [0, 1] instead of [−1, 1] (samples mapped back)", patch=_data_unit_range
        ),
        Variant(
            "seed_1", "the baseline with seed 1 (data, init, batches, noise)", cfg={"seed": cfg.seed + 1}
        ),
        Variant("seed_2", "the baseline with seed 2", cfg={"seed": cfg.seed + 2}),
        Variant(
            "no_hflip", "no random left-right flips (the study does not say it flipped)", cfg={"hflip": False}
        ),
        Variant(
            "xpred",
            "JiT's objective (x-prediction, v-loss, Heun 20) instead of the ε-DDPM: run (e) of the study",
            objective="flow",
        ),
        Variant(
            "lr_x4",
            f"peak learning rate {4 * cfg.lr:g} instead of {cfg.lr:g} (diagnostic: not the recipe)",
            cfg={"lr": 4 * cfg.lr},
        ),
    ]
    return {v.name: v for v in vs}


def combine(parts: list[Variant]) -> Variant:
    """The variants ``parts`` at once (``--variants data_01+qkv_split_init``): their config changes merged,
    setups run and patches entered in order; the sample-time extras are dropped. At most one may change the
    objective."""
    objectives = {p.objective for p in parts} - {"ddpm"}
    if len(objectives) > 1:
        raise ValueError(f"a combination can change the objective once, found {sorted(objectives)}")
    setups = [p.setup for p in parts if p.setup is not None]
    patches = [p.patch for p in parts if p.patch is not None]

    def setup(model: nn.Module) -> None:
        for f in setups:
            f(model)

    def patch() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        for f in patches:
            stack.enter_context(f())
        return stack

    return Variant(
        "+".join(p.name for p in parts),
        "; ".join(p.what for p in parts),
        cfg={k: v for p in parts for k, v in p.cfg.items()},
        setup=setup if setups else None,
        patch=patch if patches else None,
        objective=objectives.pop() if objectives else "ddpm",
    )


# --- one run ---------------------------------------------------------------------------------------------


class _Recorder:
    """Wraps ``model.loss``: before the steps in ``at`` it records the attention entropies on the probe batch."""

    def __init__(self, model: nn.Module, probe: tuple, at: set[int]) -> None:
        self.model, self.probe, self.at = model, probe, at
        self.step = 0
        self.entropy: dict[int, list[float]] = {}
        self._loss = model.loss
        model.loss = self  # an instance attribute: fit() calls model.loss(x, y, generator=g)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        if self.step in self.at:
            self.entropy[self.step] = layer_entropies(self.model.net, self.probe)
        self.step += 1
        return self._loss(x, y, generator=generator)


def _score_with(model: nn.Module, cfg: ShapesStudyConfig, variance: str, edit) -> tuple[dict, Any, Any]:
    """The study's scoring of ``model`` with the sampler's ``variance`` and an optional edit of a copy of the net."""
    import copy

    from jitkit.experiments.shapes_study import _score

    m = copy.deepcopy(model)
    if edit is not None:
        edit(m.net)
    if variance != "posterior":
        orig = m.schedule.sample

        def sample(*a, **kw):
            return orig(*a, variance=variance, **kw)

        m.schedule.sample = sample
    metrics, imgs, y, _ = _score(m, cfg, cfg.seed + 99)
    return metrics, imgs, y


def _row(name: str, what: str, losses: list[float], metrics: dict, ent: dict, cross: float | None) -> dict:
    return {
        "variant": name,
        "what": what,
        "loss_first": round(losses[0], 4) if losses else float("nan"),
        "loss_last": round(losses[-1], 4) if losses else float("nan"),
        "accuracy": metrics["accuracy"],
        "color_accuracy": metrics["color_accuracy"],
        "shape_accuracy": metrics["shape_accuracy"],
        "mean_iou": round(metrics["mean_iou"], 4),
        "entropy": {str(k): v for k, v in ent.items()},
        "cross_patch": cross,
    }


def run_variant(
    v: Variant,
    cfg: ShapesStudyConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    out: Path | None = None,
    classes: list[str] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train the study's DiT with variant ``v`` through the study's ``fit`` and score it; returns its rows
    (the trained model's, then one per sample-time extra)."""
    from jitkit.experiments.shapes_study import DiTDDPM, DiTFlow, fit

    rcfg = cfg.replace(**v.cfg) if v.cfg else cfg
    steps = rcfg.epochs * (len(labels) // rcfg.batch_size)
    at = {0, steps // 10, steps // 2}
    rows = []
    with v.patch() if v.patch else contextlib.nullcontext():
        torch.manual_seed(rcfg.seed)  # as run_shapes_study: the same initial weights for every variant
        flow = v.objective == "flow"
        model = DiTFlow(rcfg) if flow else DiTDDPM(rcfg)
        if v.setup is not None:
            v.setup(model)
        probe = (
            flow_probe_batch(images, labels)
            if flow
            else probe_batch(images, labels, rcfg.ddpm_T, model.schedule)
        )
        rec = _Recorder(model, probe, at)
        res, _ = fit(model, images, labels, rcfg, desc=v.name, progress=progress)
        del model.loss  # back to the class's method
        model.eval()
        rec.entropy[res.steps] = layer_entropies(model.net, probe)
        cross = cross_patch_ratio(model.net, probe)
        for name, (variance, edit) in {v.name: ("posterior", None), **v.extra}.items():
            metrics, imgs, y = _score_with(model, rcfg, variance, edit)
            ent = (
                rec.entropy if edit is None else {res.steps: layer_entropies(_edited(model.net, edit), probe)}
            )
            rows.append(_row(name, v.what if name == v.name else name, res.epoch_losses, metrics, ent, cross))
            if out is not None and classes is not None:
                from jitkit.images import save_grid

                save_grid(imgs, y, out / f"grid_{_slug(name)}.png", classes)
    return rows


def _edited(net: nn.Module, edit) -> nn.Module:
    import copy

    n = copy.deepcopy(net)
    edit(n)
    return n


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.replace("β", "beta")).strip("_")


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table (entropy: per block, at the last recorded step, then its first step)."""
    head = (
        "| variant | loss ep 1 → last | accuracy | colour | shape | mean IoU | attention entropy / log N "
        "(blocks 1–4, end; start) | cross-patch |\n|---|---:|---:|---:|---:|---:|---|---:|\n"
    )
    lines = []
    for r in rows:
        ent = r["entropy"]
        keys = sorted(ent, key=int)
        last = " ".join(f"{e:.3f}" for e in ent[keys[-1]]) if keys else "—"
        first = " ".join(f"{e:.3f}" for e in ent[keys[0]]) if len(keys) > 1 else ""
        lines.append(
            f"| {r['variant']} | {r['loss_first']:.4f} → {r['loss_last']:.4f} | {r['accuracy']:.3f} | "
            f"{r['color_accuracy']:.3f} | {r['shape_accuracy']:.3f} | {r['mean_iou']:.3f} | {last}"
            f"{'; ' + first if first else ''} | {r['cross_patch']:.4f} |"
        )
    return head + "\n".join(lines) + "\n"


def run_probe(
    cfg: ShapesStudyConfig,
    out: str | Path,
    names: list[str] | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Run the variants ``names`` (default: all) and write ``results.json``, ``results.md`` and the grids."""
    from jitkit.config import DataConfig
    from jitkit.data import build_dataset
    from jitkit.experiments.common import machine_record, start_run

    table = variants(cfg)
    names = names or list(table)
    bad = [p for n in names for p in n.split("+") if p not in table]
    if bad:
        raise ValueError(
            f"unknown probe variants {bad}; choose from {', '.join(table)} (or join them with +)"
        )
    table |= {n: combine([table[p] for p in n.split("+")]) for n in names if "+" in n}
    say = log or (lambda s: None)
    out = start_run(out, cfg.threads)
    ds = build_dataset(
        DataConfig(data="shapes", img_size=cfg.img_size, per_class=cfg.per_class, seed=cfg.seed, hflip=False)
    )
    rows: list[dict[str, Any]] = []
    for n in names:
        new = run_variant(
            table[n], cfg, ds.images, ds.labels, out=out, classes=list(ds.classes), progress=progress
        )
        rows += new
        for r in new:
            say(
                f"{r['variant']}: loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}, accuracy {r['accuracy']:.3f}"
                f" (colour {r['color_accuracy']:.3f}, shape {r['shape_accuracy']:.3f}), IoU {r['mean_iou']:.3f},"
                f" entropy {r['entropy']}, cross-patch {r['cross_patch']}"
            )
        results = {"config": cfg.to_dict(), **machine_record(), "rows": rows}
        atomic_write_text(out / "results.json", json.dumps(results, indent=1))
        atomic_write_text(out / "results.md", format_table(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--epochs", type=int, default=0, help="override the study's 30 epochs")
    ap.add_argument("--quick", action="store_true", help="a miniature that runs in seconds")
    args = ap.parse_args(argv)
    cfg = quick_config(threads=args.threads) if args.quick else ShapesStudyConfig(threads=args.threads)
    if args.epochs:
        cfg = cfg.replace(epochs=args.epochs)
    names = [n.strip() for n in args.variants.split(",") if n.strip()] or None
    run_probe(cfg, args.out, names, progress=False)


if __name__ == "__main__":
    main()


__all__ = [
    "Variant",
    "attention_entropy",
    "attention_maps",
    "cross_patch_ratio",
    "format_table",
    "layer_entropies",
    "main",
    "probe_batch",
    "run_probe",
    "run_variant",
    "variants",
]
