"""Named presets and the registry of named model sizes, and the resolution of a layered config dict."""

from __future__ import annotations

import copy
from typing import Any

from jitkit.config.base import ConfigError, diff_table, suggest
from jitkit.config.schema import ModelConfig, RunConfig


def _deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``upd`` merged in recursively; it shares no dict or list with either."""
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- presets -------------------------------------------------------------------------------------------
# Reference hyper-parameters (JiT release): blr 5e-5, AdamW (0.9, 0.95), wd 0, 5 warm-up epochs then
# constant, EMA 0.9999 / 0.9996, P_mean -0.8, P_std 0.8, noise scale 1.0 at 256 / 2.0 at 512,
# label drop 0.1, proj dropout 0.2 for H. Sampling: Heun 50 steps, cfg and interval per size.


def _imagenet(
    name: str, size: int, *, classes: int = 1000, cfg: float = 2.9, data: str = "imagenet", **model: Any
) -> dict[str, Any]:
    """The reference recipe at ``size`` px for model ``name`` (train options are added per preset)."""
    return {
        "model": {"name": name, "img_size": size, "num_classes": classes, **model},
        "diffusion": {"noise_scale": 2.0 if size >= 512 else 1.0},
        "sampler": {"method": "heun", "steps": 50, "cfg": cfg, "interval": [0.1, 1.0]},
        "data": {"data": data, "img_size": size, "hflip": True},  # the reference flips ImageNet
        "train": {
            "blr": 5e-5,
            "warmup_epochs": 5.0,
            "epochs": 600,
            "ema_decay1": 0.9999,
            "ema_decay2": 0.9996,
            # compiled blocks (measured gain: benchmarks/README.md); the engine stays eager where torch.compile
            # has no compiler (no C++ compiler on CPU, no triton on CUDA, MPS) or with FSDP
            "compile": True,
            "batch_size": 128,
        },
    }


def _with_train(preset: dict[str, Any], **train: Any) -> dict[str, Any]:
    return _deep_update(preset, {"train": train})


PRESETS: dict[str, dict[str, Any]] = {
    "shapes": {
        # tuned for the 2-core CPU budget (docs/train.md): a 0.74 M-parameter JiT-T/4, 20 epochs of 3,200 images
        # at a high learning rate (the default run within a minute, docs/bench.md), sampled by DPM-Solver++(2M)
        # with its corrector in 10 steps on the log-SNR grid at guidance 2 (docs/sampling.md: a lower error than
        # Heun's 19 or 21 network evaluations with 10; guidance from `jitkit sweep --cfgs 1.5,2,2.5,3,4` on a
        # run of this recipe)
        # no in-context class tokens: on 16 tokens they add 25 % to half the blocks, and the label through adaLN
        # alone scores the same here (docs/train.md)
        "model": {"name": "JiT-T/4", "img_size": 16, "num_classes": 16, "in_context_len": 0},
        "diffusion": {"noise_scale": 1.0},
        "sampler": {
            "method": "dpm++2m-pc",
            "steps": 10,
            "cfg": 2.0,
            "interval": [0.0, 1.0],
            "time_grid": "logsnr",
        },
        # flips are part of this tuned recipe (the shapes are left-right symmetric); they hold for the shapes
        # data only: another --data under this preset gets DataConfig's default, no flips (cli/train.py)
        "data": {"data": "shapes", "img_size": 16, "per_class": 200, "hflip": True},
        "train": {
            "out": "runs/shapes",
            "epochs": 20,
            "batch_size": 64,
            "blr": 5.6e-2,  # lr 1.4e-2 at batch 64
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
    "imagenet256-b16": _with_train(_imagenet("JiT-B/16", 256), out="runs/imagenet256-b16"),
    "imagenet256-b16-2x12gb": _with_train(
        _imagenet("JiT-B/16", 256, grad_checkpoint=True),
        out="runs/imagenet256-b16-2x12gb",
        batch_size=32,
        global_batch=1024,
    ),
    "imagenette256-b16-t4": _with_train(
        _imagenet("JiT-B/16", 256, classes=10, data="imagenette"),
        out="runs/imagenette256-b16-t4",
        epochs=200,
        batch_size=16,
        global_batch=256,
        precision="fp16",
    ),
    "imagenet512-b32": _with_train(_imagenet("JiT-B/32", 512), out="runs/imagenet512-b32"),
    "imagenet256-h16": _with_train(
        _imagenet("JiT-H/16", 256, cfg=2.2, proj_dropout=0.2), out="runs/imagenet256-h16"
    ),
}


def preset_dict(name: str) -> dict[str, Any]:
    """The raw (not yet resolved against the model registry) dict of a named preset."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}{suggest(name, list(PRESETS))}; valid presets: {', '.join(PRESETS)}"
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


# what a model under an unregistered name must give (a registered name fills these from MODEL_SIZES)
ARCHITECTURE_FIELDS = (
    "img_size",
    "patch_size",
    "hidden_size",
    "depth",
    "num_heads",
    "bottleneck_dim",
    "in_context_len",
    "in_context_start",
)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a registered size (``JiT-B/16``), with any field overridden.

    Names are matched case-insensitively; an unknown name lists the registered ones.
    """
    canon = {n.lower(): n for n in MODEL_NAMES}
    key = canon.get(name.lower())
    if key is None:
        raise ConfigError(
            f"unknown model {name!r}{suggest(name, list(MODEL_NAMES))}; registered models: {', '.join(MODEL_NAMES)}"
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

    A registered name fills the architecture, and explicit model fields win over it. Any other name is a
    custom architecture and must give all of it (``ARCHITECTURE_FIELDS``): an unknown name alone raises
    ``ConfigError`` listing the registered ones with the closest, instead of silently building another network.
    """
    d = merge_dicts({}, d)
    m = dict(d.get("model", {}))
    name = m.pop("name", ModelConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a registered name such as 'JiT-B/16', found {name!r}")
    if name.lower() in {n.lower() for n in MODEL_NAMES}:
        mc = model_config(name, **m)
    else:
        missing = [f for f in ARCHITECTURE_FIELDS if f not in m]
        if missing:
            try:
                model_config(name)
            except ConfigError as e:
                raise ConfigError(
                    f"{e}; a model under another name is a custom architecture and must give all of "
                    f"{', '.join(ARCHITECTURE_FIELDS)} (missing {', '.join(missing)})"
                ) from None
        mc = ModelConfig.from_dict({"name": name, **m})
    d["model"] = mc.to_dict()
    return RunConfig.from_dict(d)


def resume_config(ck: RunConfig, explicit: dict[str, Any]) -> tuple[RunConfig, list[str]]:
    """The config of a resumed run: the checkpoint's ``ck`` with what was set explicitly on top.

    ``explicit`` holds nested sections (``{"train": {"epochs": 80}}``). The architecture cannot change: model
    settings that differ from the checkpoint's raise ``ConfigError`` with both configs side by side. Returns
    the config and the changes as ``"section.key: old -> new"`` lines.
    """
    model_over = dict(explicit.get("model", {}))
    if model_over:
        if "name" in model_over and model_over["name"] != ck.model.name:
            req = resolve_run_config({"model": model_over}).model
        else:
            req = ck.model.replace(**{k: v for k, v in model_over.items() if k != "name"})
        if req.to_dict() != ck.model.to_dict():
            raise ConfigError(
                "the model asked for differs from the checkpoint's; refusing to continue (drop the model "
                "settings to use the checkpoint's, or start a new run in another output folder)\n"
                + diff_table(ck.model.to_dict(), req.to_dict(), "checkpoint", "requested")
            )
    old = ck.to_dict()
    cfg = RunConfig.from_dict(merge_dicts(old, {k: v for k, v in explicit.items() if k != "model"}))
    new = cfg.to_dict()
    changed = [
        f"{s}.{k}: {old[s][k]} -> {new[s][k]}" for s in cfg.SECTIONS for k in old[s] if old[s][k] != new[s][k]
    ]
    return cfg, changed
