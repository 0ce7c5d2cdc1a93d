"""Typed, frozen configuration for every part of jitkit.

This module never imports torch: configs can be read, validated and printed anywhere.
Each dataclass has ``to_dict`` / ``from_dict`` (unknown keys are an error that lists the valid ones)
and ``validate`` (raises ``ValueError`` naming what was expected and what was found).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

T = TypeVar("T", bound="_Base")


class ConfigError(ValueError):
    """A configuration value or key that jitkit cannot use."""


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class _Base:
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any], *, strict: bool = True) -> T:
        valid = cls.field_names()
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            if k not in valid:
                if strict:
                    raise ConfigError(
                        f"unknown {cls.__name__} key {k!r}{_suggest(k, valid)}; valid keys: {', '.join(valid)}"
                    )
                continue
            kwargs[k] = v
        obj = cls(**kwargs)
        obj = obj._coerce()
        obj.validate()
        return obj

    def _coerce(self: T) -> T:
        """Cast values read from JSON/YAML/CLI strings to the declared field types."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, bool) and not isinstance(v, bool):
                if isinstance(v, str):
                    changes[f.name] = v.strip().lower() in ("1", "true", "yes", "on")
                else:
                    changes[f.name] = bool(v)
            elif isinstance(default, int) and not isinstance(default, bool) and isinstance(v, (str, float)):
                try:
                    fv = float(v)
                except ValueError as e:
                    raise ConfigError(f"{f.name}: expected an integer, found {v!r}") from e
                if fv != int(fv):
                    raise ConfigError(f"{f.name}: expected an integer, found {v!r}")
                changes[f.name] = int(fv)
            elif isinstance(default, float) and isinstance(v, (str, int)) and not isinstance(v, bool):
                try:
                    changes[f.name] = float(v)
                except ValueError as e:
                    raise ConfigError(f"{f.name}: expected a number, found {v!r}") from e
            elif isinstance(default, tuple) and isinstance(v, (list, str)):
                items = v.replace(",", " ").split() if isinstance(v, str) else v
                changes[f.name] = tuple(float(x) for x in items)
        return replace(self, **changes) if changes else self

    def replace(self: T, **kw: Any) -> T:
        valid = self.field_names()
        for k in kw:
            if k not in valid:
                raise ConfigError(
                    f"unknown {type(self).__name__} key {k!r}{_suggest(k, valid)}; valid keys: {', '.join(valid)}"
                )
        obj = replace(self, **kw)._coerce()
        obj.validate()
        return obj

    def validate(self) -> None:  # pragma: no cover - overridden
        pass


ATTENTION_KINDS = ("sdpa", "math-fp32")


@dataclass(frozen=True)
class ModelConfig(_Base):
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
class DiffusionConfig(_Base):
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


SAMPLERS = ("heun", "euler")


@dataclass(frozen=True)
class SamplerConfig(_Base):
    """How to integrate the flow from noise (t=0) to data (t=1)."""

    method: str = "heun"
    steps: int = 50
    cfg: float = 1.0
    interval: tuple = (0.0, 1.0)

    def validate(self) -> None:
        if self.method not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, found {self.method!r}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, found {self.steps}")
        if len(self.interval) != 2:
            raise ConfigError(f"interval must be two numbers LOW HIGH, found {self.interval!r}")
        lo, hi = self.interval
        if not (0.0 <= lo < hi <= 1.0):
            raise ConfigError(f"interval must satisfy 0 <= LOW < HIGH <= 1, found {lo} {hi}")
        if self.cfg < 0:
            raise ConfigError(f"cfg must be >= 0, found {self.cfg}")


@dataclass(frozen=True)
class DataConfig(_Base):
    """Where training images come from: 'shapes', 'swissroll-D', an image folder or a prepared cache."""

    data: str = "shapes"
    img_size: int = 16
    per_class: int = 200
    seed: int = 0
    workers: int = -1  # -1: chosen from CPU count and free memory
    hflip: bool = True
    strict: bool = False

    def validate(self) -> None:
        if self.img_size < 1:
            raise ConfigError(f"img_size must be positive, found {self.img_size}")


@dataclass(frozen=True)
class TrainConfig(_Base):
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
    fsdp: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = 20
    sample_every: int = 0  # steps; 0: at the end only
    ckpt_every: int = 0  # steps; 0: at the end of each epoch
    ckpt_min_seconds: float = 60.0  # epoch-end checkpoints (ckpt_every 0) at most this often
    keep_ckpts: int = 2
    eval_at_end: bool = True
    eval_every_epochs: int = 0
    threads: int = 0  # CPU threads for torch ops (0: torch's default, one per core)

    def validate(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule must be 'constant' or 'cosine', found {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto|fp32|bf16|fp16, found {self.precision!r}")
        if self.accum_steps < 1:
            raise ConfigError(f"accum_steps must be >= 1, found {self.accum_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, found {self.batch_size}")
        for name in ("ema_decay1", "ema_decay2"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"{name} must lie in [0, 1), found {v}")


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

    def override(self, updates: dict[str, Any]) -> RunConfig:
        """Apply dotted overrides such as {"train.blr": 1e-4, "model.depth": 6}.

        A bare key (``blr``) is accepted when exactly one section has it.
        """
        sections = {s: dict() for s in self.SECTIONS}
        for key, value in updates.items():
            if "." in key:
                sec, name = key.split(".", 1)
                if sec not in self.SECTIONS:
                    raise ConfigError(
                        f"unknown config section {sec!r} in {key!r}; valid sections: {', '.join(self.SECTIONS)}"
                    )
            else:
                owners = [s for s in self.SECTIONS if key in type(getattr(self, s)).field_names()]
                if not owners:
                    allkeys = sorted(
                        f"{s}.{n}" for s in self.SECTIONS for n in type(getattr(self, s)).field_names()
                    )
                    raise ConfigError(
                        f"unknown config key {key!r}{_suggest(key, [k.split('.')[1] for k in allkeys])}; "
                        f"valid keys: {', '.join(allkeys)}"
                    )
                if len(owners) > 1:
                    raise ConfigError(
                        f"config key {key!r} is ambiguous: write one of {', '.join(o + '.' + key for o in owners)}"
                    )
                sec, name = owners[0], key
            sections[sec][name] = value
        kw = {s: getattr(self, s).replace(**sections[s]) for s in self.SECTIONS if sections[s]}
        return replace(self, **kw)


def _deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


# --- presets -------------------------------------------------------------------------------------------
# Reference hyper-parameters (JiT release): blr 5e-5, AdamW (0.9, 0.95), wd 0, 5 warm-up epochs then
# constant, EMA 0.9999 / 0.9996, P_mean -0.8, P_std 0.8, noise scale 1.0 at 256 / 2.0 at 512,
# label drop 0.1, proj dropout 0.2 for H. Sampling: Heun 50 steps, cfg and interval per size.

_IMAGENET_TRAIN = {
    "blr": 5e-5,
    "warmup_epochs": 5.0,
    "epochs": 600,
    "ema_decay1": 0.9999,
    "ema_decay2": 0.9996,
    # compiled blocks: 1.15x the training step of B/16 on CPU (benchmarks/README.md); the engine stays eager
    # where torch.compile has no compiler (no C++ compiler on CPU, no triton on CUDA, MPS) or with --fsdp
    "compile": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "shapes": {
        # tuned for the 2-core CPU budget (docs/train.md): a 0.74 M-parameter JiT-T/4, 50 epochs of 3,200 images
        "model": {"name": "JiT-T/4", "img_size": 16, "num_classes": 16},
        "diffusion": {"noise_scale": 1.0},
        "sampler": {"method": "heun", "steps": 20, "cfg": 3.0, "interval": [0.0, 1.0]},
        "data": {"data": "shapes", "img_size": 16, "per_class": 200},
        "train": {
            "out": "runs/shapes",
            "epochs": 50,
            "batch_size": 64,
            "blr": 1.2e-2,  # lr 3e-3 at batch 64
            "warmup_epochs": 2.0,
            "schedule": "cosine",
            "grad_clip": 1.0,
            "ema_decay1": 0.998,
            "ema_decay2": 0.995,
            "ema_warmup": True,
            "log_every": 50,
            "sample_every": 0,
        },
    },
    "imagenet256-b16": {
        "model": {"name": "JiT-B/16", "img_size": 256, "num_classes": 1000},
        "diffusion": {"noise_scale": 1.0},
        "sampler": {"method": "heun", "steps": 50, "cfg": 2.9, "interval": [0.1, 1.0]},
        "data": {"data": "imagenet", "img_size": 256},
        "train": {**_IMAGENET_TRAIN, "out": "runs/imagenet256-b16", "batch_size": 128},
    },
    "imagenet256-b16-2x12gb": {
        "model": {"name": "JiT-B/16", "img_size": 256, "num_classes": 1000, "grad_checkpoint": True},
        "diffusion": {"noise_scale": 1.0},
        "sampler": {"method": "heun", "steps": 50, "cfg": 2.9, "interval": [0.1, 1.0]},
        "data": {"data": "imagenet", "img_size": 256},
        "train": {
            **_IMAGENET_TRAIN,
            "out": "runs/imagenet256-b16-2x12gb",
            "batch_size": 32,
            "global_batch": 1024,
        },
    },
    "imagenette256-b16-t4": {
        "model": {"name": "JiT-B/16", "img_size": 256, "num_classes": 10},
        "diffusion": {"noise_scale": 1.0},
        "sampler": {"method": "heun", "steps": 50, "cfg": 2.9, "interval": [0.1, 1.0]},
        "data": {"data": "imagenette", "img_size": 256},
        "train": {
            **_IMAGENET_TRAIN,
            "out": "runs/imagenette256-b16-t4",
            "epochs": 200,
            "batch_size": 16,
            "global_batch": 256,
            "precision": "fp16",
        },
    },
    "imagenet512-b32": {
        "model": {"name": "JiT-B/32", "img_size": 512, "num_classes": 1000},
        "diffusion": {"noise_scale": 2.0},
        "sampler": {"method": "heun", "steps": 50, "cfg": 2.9, "interval": [0.1, 1.0]},
        "data": {"data": "imagenet", "img_size": 512},
        "train": {**_IMAGENET_TRAIN, "out": "runs/imagenet512-b32", "batch_size": 128},
    },
    "imagenet256-h16": {
        "model": {"name": "JiT-H/16", "img_size": 256, "num_classes": 1000, "proj_dropout": 0.2},
        "diffusion": {"noise_scale": 1.0},
        "sampler": {"method": "heun", "steps": 50, "cfg": 2.2, "interval": [0.1, 1.0]},
        "data": {"data": "imagenet", "img_size": 256},
        "train": {**_IMAGENET_TRAIN, "out": "runs/imagenet256-h16", "batch_size": 128},
    },
}


def preset_dict(name: str) -> dict[str, Any]:
    """The raw (not yet resolved against the model registry) dict of a named preset."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}{_suggest(name, list(PRESETS))}; valid presets: {', '.join(PRESETS)}"
        )
    return _deep_update({}, PRESETS[name])


def merge_dicts(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (``upd`` wins), used to layer preset ← YAML ← command line."""
    return _deep_update(base, upd)


# --- named model sizes ----------------------------------------------------------------------------------
# (depth, hidden, heads, bottleneck, in_context_len, in_context_start). The official three come from the
# JiT release; T and S are jitkit's CPU sizes for 16-64 px images.
MODEL_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "T": (4, 96, 4, 32, 4, 2),
    "S": (6, 192, 6, 48, 8, 2),
    "B": (12, 768, 12, 128, 32, 4),
    "L": (24, 1024, 16, 128, 32, 8),
    "H": (32, 1280, 16, 256, 32, 10),
}
# name -> default image size (/16 at 256 px and /32 at 512 px as in the release; small ones at 16/32 px)
MODEL_NAMES: dict[str, int] = {
    "JiT-T/2": 16,
    "JiT-T/4": 32,
    "JiT-S/2": 16,
    "JiT-S/4": 32,
    "JiT-B/16": 256,
    "JiT-B/32": 512,
    "JiT-L/16": 256,
    "JiT-L/32": 512,
    "JiT-H/16": 256,
    "JiT-H/32": 512,
}


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a registered size (``JiT-B/16``), with any field overridden.

    Names are matched case-insensitively; an unknown name lists the registered ones.
    """
    canon = {n.lower(): n for n in MODEL_NAMES}
    key = canon.get(name.lower())
    if key is None:
        raise ConfigError(
            f"unknown model {name!r}{_suggest(name, list(MODEL_NAMES))}; registered models: {', '.join(MODEL_NAMES)}"
        )
    size, patch = key.split("-")[1].split("/")
    depth, hidden, heads, bottleneck, ic_len, ic_start = MODEL_SIZES[size]
    base = ModelConfig(
        name=key,
        img_size=MODEL_NAMES[key],
        patch_size=int(patch),
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        bottleneck_dim=bottleneck,
        in_context_len=ic_len,
        in_context_start=ic_start,
    )
    return base.replace(**overrides) if overrides else base


def resolve_run_config(d: dict[str, Any]) -> RunConfig:
    """Turn a (preset ← YAML ← CLI) dict into a RunConfig, filling the architecture from the model name.

    Explicit model fields win over the registered size; the data image size follows the model's.
    """
    d = merge_dicts({}, d)
    m = dict(d.get("model", {}))
    name = m.pop("name", ModelConfig.name)
    if name in {n for n in MODEL_NAMES} or name.lower() in {n.lower() for n in MODEL_NAMES}:
        mc = model_config(name, **m)
    else:
        mc = ModelConfig.from_dict({"name": name, **m})
    d["model"] = mc.to_dict()
    return RunConfig.from_dict(d)
