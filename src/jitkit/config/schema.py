"""The configs of a run: model, diffusion, sampler, data and training sections, and ``RunConfig``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from jitkit.config.base import ConfigBase, ConfigError, suggest

ATTENTION_KINDS = ("sdpa", "math", "math-fp32")


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """Architecture of a JiT network (everything needed to rebuild it from a checkpoint)."""

    name: str = "JiT-B/16"
    img_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    bottleneck_dim: int = 128
    in_context_len: int = 32
    in_context_start: int = 4
    num_classes: int = 1000
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    attention: str = "sdpa"
    grad_checkpoint: bool = False

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(int(self.hidden_size * self.mlp_ratio) * 2 / 3)

    def validate(self) -> None:
        if self.img_size <= 0 or self.patch_size <= 0:
            raise ConfigError(
                f"img_size and patch_size must be positive, found {self.img_size} and {self.patch_size}"
            )
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size must be divisible by patch_size: found img_size={self.img_size}, "
                f"patch_size={self.patch_size} (try img_size={self.img_size // self.patch_size * self.patch_size or self.patch_size})"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"the head dim hidden_size/num_heads must be divisible by 4 for 2-D RoPE, found {self.head_dim}"
            )
        if self.hidden_size % 4:
            raise ConfigError(f"hidden_size must be divisible by 4 (2-D sin-cos), found {self.hidden_size}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, found {self.num_classes}")
        if self.in_context_len < 0 or not (0 <= self.in_context_start <= self.depth):
            raise ConfigError(
                f"in_context_start must lie in [0, depth={self.depth}] and in_context_len >= 0, found "
                f"start={self.in_context_start}, len={self.in_context_len}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention must be one of {ATTENTION_KINDS}, found {self.attention!r}")


PREDICTIONS = ("x", "eps", "v")


@dataclass(frozen=True)
class DiffusionConfig(ConfigBase):
    """The flow-matching objective: z_t = t·x + (1−t)·e, e ~ N(0, noise_scale²)."""

    pred: str = "x"
    loss: str = "v"
    P_mean: float = -0.8
    P_std: float = 0.8
    t_eps: float = 0.05
    noise_scale: float = 1.0
    label_drop_prob: float = 0.1

    def validate(self) -> None:
        if self.pred not in PREDICTIONS:
            raise ConfigError(f"pred must be one of {PREDICTIONS}, found {self.pred!r}")
        if self.loss not in PREDICTIONS:
            raise ConfigError(f"loss must be one of {PREDICTIONS}, found {self.loss!r}")
        if not (0.0 < self.t_eps < 1.0):
            raise ConfigError(f"t_eps must lie in (0, 1), found {self.t_eps}")
        if self.noise_scale <= 0:
            raise ConfigError(f"noise_scale must be positive, found {self.noise_scale}")
        if not (0.0 <= self.label_drop_prob < 1.0):
            raise ConfigError(f"label_drop_prob must lie in [0, 1), found {self.label_drop_prob}")
        if self.P_std <= 0:
            raise ConfigError(f"P_std must be positive, found {self.P_std}")


# the solvers of jitkit.diffusion (sampling.py: Euler, Heun; solvers.py: the multistep DPM-Solver++ family)
SAMPLERS = ("heun", "euler", "dpm++2m", "dpm++3m", "dpm++2m-pc", "dpm++3m-pc")
# the time grids t_0 = 0 < t_1 < … < t_K = 1 of jitkit.diffusion.grids ("uniform": the reference's k/K)
GRIDS = ("uniform", "logsnr", "edm")


@dataclass(frozen=True)
class SamplerConfig(ConfigBase):
    """How to integrate the flow from noise (t=0) to data (t=1): the solver, its steps, the time grid,
    classifier-free guidance and its interval."""

    method: str = "heun"
    steps: int = 50
    cfg: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)
    time_grid: str = "uniform"

    def validate(self) -> None:
        if self.method not in SAMPLERS:
            raise ConfigError(
                f"sampler must be one of {', '.join(SAMPLERS)}, found {self.method!r}"
                f"{suggest(str(self.method), list(SAMPLERS))}"
            )
        if self.time_grid not in GRIDS:
            raise ConfigError(
                f"time_grid must be one of {', '.join(GRIDS)}, found {self.time_grid!r}"
                f"{suggest(str(self.time_grid), list(GRIDS))}"
            )
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, found {self.steps}")
        if len(self.interval) != 2:
            raise ConfigError(f"interval must be two numbers LOW HIGH, found {self.interval!r}")
        lo, hi = self.interval
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(f"interval must be two finite numbers LOW HIGH, found {lo} {hi}")
        if not (0.0 <= lo < hi <= 1.0):
            raise ConfigError(f"interval must satisfy 0 <= LOW < HIGH <= 1, found {lo} {hi}")
        if not math.isfinite(self.cfg):
            raise ConfigError(f"cfg must be a finite number >= 0 (1: no guidance), found {self.cfg}")
        if self.cfg < 0:
            raise ConfigError(f"cfg must be >= 0, found {self.cfg}")


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where training images come from: 'shapes', 'swissroll-D', an image folder or a prepared cache."""

    data: str = "shapes"
    img_size: int = 16
    per_class: int = 200
    seed: int = 0
    workers: int = -1  # -1: chosen from CPU count and free memory
    # random left-right flips; off unless asked for (mirroring breaks text, digits, asymmetric faces): the
    # ImageNet presets turn them on as the reference does, the shapes preset for its symmetric shapes
    hflip: bool = False
    strict: bool = False

    def validate(self) -> None:
        if self.img_size < 1:
            raise ConfigError(f"img_size must be positive, found {self.img_size}")
        if self.per_class < 1:
            raise ConfigError(f"per_class must be >= 1, found {self.per_class}")
        if self.workers < -1:
            raise ConfigError(f"workers must be >= 0 (or -1: sized from the host), found {self.workers}")


# where the training scalars and sample grids go besides log.jsonl (train.log: names joined by commas, or "none")
LOG_SINKS = ("tensorboard", "wandb")
COMPILE_SCOPES = ("blocks", "model")  # train.compile_scope (JiT.compile_blocks(whole=...))


def log_sinks(value: str) -> tuple[str, ...]:
    """The sinks named by a ``train.log`` value: ``"tensorboard,wandb"`` → ("tensorboard", "wandb"), ``"none"``
    → (). Raises ``ConfigError`` for a name that is not in :data:`LOG_SINKS`."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    if names == ["none"]:
        return ()
    valid = ", ".join((*LOG_SINKS, "none"))
    if not names:
        raise ConfigError(f"log must name sinks joined by commas (valid: {valid}), found {value!r}")
    if "none" in names:
        raise ConfigError(f"log: 'none' stands alone (no sinks), found {value!r}; valid sinks: {valid}")
    for n in names:
        if n not in LOG_SINKS:
            raise ConfigError(
                f"log: unknown sink {n!r}{suggest(n, [*LOG_SINKS, 'none'])} in {value!r}; valid sinks: {valid} "
                f"(several joined by commas, e.g. tensorboard,wandb)"
            )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Optimisation, schedule, EMA, logging and checkpointing of a training run."""

    out: str = "runs/shapes"
    epochs: int = 40
    max_steps: int = 0  # 0: epochs decide
    batch_size: int = 64  # micro-batch per process
    accum_steps: int = 1
    global_batch: int = 0  # 0: batch_size * accum_steps * world_size
    blr: float = 5e-5
    lr: float = 0.0  # 0: blr * effective batch / 256
    min_lr: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 5.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 0.0
    ema_decay1: float = 0.9999
    ema_decay2: float = 0.9996
    ema_warmup: bool = False  # decay min(d, (1+n)/(10+n)) at update n (not in the reference; for short runs)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    compile_scope: str = "blocks"  # blocks: each block its own graph; model: the whole forward one graph
    fsdp: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = 20
    log: str = "tensorboard"  # sinks besides log.jsonl: tensorboard | wandb | tensorboard,wandb | none
    sample_every: int = 0  # steps; 0: at the end only
    ckpt_every: int = 0  # steps; 0: at the end of each epoch
    ckpt_min_seconds: float = 60.0  # epoch-end checkpoints (ckpt_every 0) at most this often
    keep_ckpts: int = 2
    eval_at_end: bool = True
    eval_every_epochs: int = 0
    threads: int = 0  # CPU threads for torch ops (0: torch's default, one per core)
    dist_timeout: float = 1800.0  # seconds a rank may wait in a collective before the job fails (torchrun)

    def validate(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule must be 'constant' or 'cosine', found {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto|fp32|bf16|fp16, found {self.precision!r}")
        if self.compile_scope not in COMPILE_SCOPES:
            raise ConfigError(
                f"compile_scope must be one of {'|'.join(COMPILE_SCOPES)}, found {self.compile_scope!r}"
            )
        if self.accum_steps < 1:
            raise ConfigError(f"accum_steps must be >= 1, found {self.accum_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, found {self.batch_size}")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 1 (or 0: the epochs decide), found {self.max_steps}")
        if self.epochs < 1 and self.max_steps == 0:
            raise ConfigError(
                f"epochs must be >= 1, found {self.epochs} (or set max_steps=N, N >= 1, to stop after N steps)"
            )
        self.check_at_least(1, "log_every")
        log_sinks(self.log)
        self.check_at_least(
            0,
            "global_batch",
            "lr",
            "min_lr",
            "warmup_epochs",
            "weight_decay",
            "grad_clip",
            "sample_every",
            "ckpt_every",
            "ckpt_min_seconds",
            "keep_ckpts",
            "eval_every_epochs",
            "threads",
        )
        if not self.blr > 0 and not self.lr > 0:
            raise ConfigError(f"blr must be positive (or give lr > 0), found blr={self.blr}, lr={self.lr}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"{name} must lie in [0, 1), found {v}")
        for name in ("ema_decay1", "ema_decay2"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"{name} must lie in [0, 1), found {v}")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be a positive number of seconds, found {self.dist_timeout}")

    @property
    def log_sinks(self) -> tuple[str, ...]:
        """The sinks of ``log`` (see :func:`log_sinks`)."""
        return log_sinks(self.log)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as config.json in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("model", "diffusion", "sampler", "data", "train")

    def to_dict(self) -> dict[str, Any]:
        return {s: getattr(self, s).to_dict() for s in self.SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, strict: bool = True) -> RunConfig:
        unknown = [k for k in d if k not in cls.SECTIONS]
        if unknown and strict:
            raise ConfigError(
                f"unknown config section(s) {unknown}; valid sections: {', '.join(cls.SECTIONS)}"
            )
        return cls(
            model=ModelConfig.from_dict(d.get("model", {}), strict=strict),
            diffusion=DiffusionConfig.from_dict(d.get("diffusion", {}), strict=strict),
            sampler=SamplerConfig.from_dict(d.get("sampler", {}), strict=strict),
            data=DataConfig.from_dict(d.get("data", {}), strict=strict),
            train=TrainConfig.from_dict(d.get("train", {}), strict=strict),
        )

    @classmethod
    def nest(cls, flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Dotted overrides → sections: {"train.blr": x, "depth": 6} → {"train": {"blr": x}, "model": {"depth": 6}}.

        A bare key is accepted when exactly one section has it; unknown and ambiguous keys are errors that
        list the valid ones.
        """
        section_cls = {s: type(getattr(cls(), s)) for s in cls.SECTIONS}
        owners: dict[str, list[str]] = {}
        for s in cls.SECTIONS:
            for n in section_cls[s].field_names():
                owners.setdefault(n, []).append(s)
        nested: dict[str, dict[str, Any]] = {}
        for key, val in flat.items():
            if "." in key:
                sec, name = key.split(".", 1)
                if sec not in cls.SECTIONS:
                    raise ConfigError(
                        f"unknown config section {sec!r} in {key!r}; valid sections: {', '.join(cls.SECTIONS)}"
                    )
                valid = section_cls[sec].field_names()
                if name not in valid:
                    raise ConfigError(
                        f"unknown config key {key!r}{suggest(name, valid)}; valid keys of {sec}: {', '.join(valid)}"
                    )
            else:
                if key not in owners:
                    allkeys = sorted(f"{s}.{n}" for n, ss in owners.items() for s in ss)
                    raise ConfigError(
                        f"unknown config key {key!r}{suggest(key, list(owners))}; valid keys: {', '.join(allkeys)}"
                    )
                if len(owners[key]) > 1:
                    raise ConfigError(
                        f"config key {key!r} is ambiguous: write one of {', '.join(o + '.' + key for o in owners[key])}"
                    )
                sec, name = owners[key][0], key
            nested.setdefault(sec, {})[name] = val
        return nested

    def override(self, updates: dict[str, Any]) -> RunConfig:
        """Apply dotted overrides such as {"train.blr": 1e-4, "model.depth": 6} (see :meth:`nest`)."""
        nested = self.nest(updates)
        return replace(self, **{s: getattr(self, s).replace(**kv) for s, kv in nested.items()})
