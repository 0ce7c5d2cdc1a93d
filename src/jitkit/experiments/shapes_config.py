"""The knobs of the toy-scale DiT study (:mod:`jitkit.experiments.shapes_study`): its recipe by default,
a miniature for tests (``quick_config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jitkit.config import ConfigBase, ConfigError, ModelConfig, SamplerConfig

RUN_KEYS = ("dit", "jit", "jit_long", "unet", "dit_xpred", "jit_eps")


@dataclass(frozen=True)
class ShapesStudyConfig(ConfigBase):
    """Every knob of the study (defaults: the study's recipe)."""

    img_size: int = 16
    per_class: int = 200
    seed: int = 0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    hflip: bool = True
    # DiT / DDPM
    dit_hidden: int = 64
    dit_depth: int = 4
    dit_heads: int = 4
    ddpm_T: int = 200
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # JiT
    jit_bottleneck: int = 32
    jit_in_context: int = 4
    jit_in_context_start: int = 2
    heun_steps: int = 20
    # (d) U-Net: trained and sampled exactly as (a) (same DDPM, recipe and sampler); 320,091 parameters
    unet_base: int = 24
    unet_mults: tuple[int, ...] = (1, 1, 2)
    unet_emb: int = 96
    unet_attn_heads: int = 4
    # which of (a) dit, (b) jit, (c) jit_long, (d) unet, (e) dit_xpred, (f) jit_eps to run
    runs: tuple[str, ...] = RUN_KEYS
    # (c): the long JiT run
    # the recipe of the `jitkit train` shapes preset (batch 64, lr 3e-3, 2 warm-up epochs, cosine, EMA 0.998
    # warmed up), which reaches crisp shapes with JiT-T/4 in 50 epochs; here with the study's narrower JiT
    long_max_epochs: int = 100
    long_check_every: int = 10
    long_lr: float = 3e-3
    long_batch_size: int = 64
    long_warmup_epochs: float = 2.0
    long_cfg: float = 3.0  # (c) samples with classifier-free guidance, as the preset's checkpoint sampler
    ema_decay: float = 0.998  # warmed up: min(d, (1+n)/(10+n)), so early checks already average recent steps
    target_accuracy: float = 0.95
    target_iou: float = 0.9
    # evaluation
    samples_per_class: int = 16
    trajectory_frames: int = 10
    threads: int = 0

    def validate(self) -> None:
        self.check_at_least(
            1, "epochs", "batch_size", "ddpm_T", "heun_steps", "samples_per_class", "trajectory_frames"
        )
        bad = [r for r in self.runs if r not in RUN_KEYS]
        if bad or not self.runs:
            raise ConfigError(f"runs must be a non-empty subset of {RUN_KEYS}, found {list(self.runs)}")
        if "jit_long" in self.runs:
            self.check_at_least(1, "long_max_epochs", "long_check_every")
        if "unet" in self.runs:
            self.check_at_least(1, "unet_base", "unet_emb")

    def jit_model_config(self) -> ModelConfig:
        return ModelConfig(
            name="JiT-study/4",
            img_size=self.img_size,
            patch_size=4,
            hidden_size=self.dit_hidden,
            depth=self.dit_depth,
            num_heads=self.dit_heads,
            bottleneck_dim=self.jit_bottleneck,
            in_context_len=self.jit_in_context,
            in_context_start=min(self.jit_in_context_start, self.dit_depth),
            num_classes=16,
        )

    def unet_config(self) -> Any:
        """(d)'s ``jitkit.models.unet.UNetConfig`` (imported here: this module stays free of torch)."""
        from jitkit.models.unet import UNetConfig

        return UNetConfig(
            img_size=self.img_size,
            base_channels=self.unet_base,
            channel_mults=self.unet_mults,
            emb_dim=self.unet_emb,
            attn_heads=self.unet_attn_heads,
            num_classes=16,
        )

    def jit_sampler(self) -> SamplerConfig:
        return SamplerConfig(method="heun", steps=self.heun_steps, cfg=1.0)

    def long_sampler(self) -> SamplerConfig:
        """(c)'s sampler: Heun as (b), with guidance scale ``long_cfg`` over the whole interval."""
        return SamplerConfig(method="heun", steps=self.heun_steps, cfg=self.long_cfg)


# big enough steps (lr 5e-3, 128 steps) that the quick models measurably learn (the test compares them with
# untrained ones), and β scaled to the short T (ᾱ_T ≈ 0.1 as with the study's T = 200)
QUICK = dict(
    per_class=8,
    epochs=16,
    batch_size=16,
    lr=5e-3,
    dit_hidden=32,
    dit_depth=2,
    dit_heads=2,
    ddpm_T=10,
    beta_start=2e-3,
    beta_end=0.4,
    heun_steps=3,
    long_max_epochs=2,
    long_check_every=1,
    long_batch_size=32,
    unet_base=8,
    unet_mults=(1, 2),
    unet_emb=16,
    unet_attn_heads=2,
    samples_per_class=2,
    trajectory_frames=3,
)


def quick_config(**overrides: Any) -> ShapesStudyConfig:
    """A miniature of the study that runs in seconds (tests, ``--quick``); ``overrides`` as ``replace``."""
    return ShapesStudyConfig().replace(**{**QUICK, **overrides})
