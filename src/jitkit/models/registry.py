"""The one registry of named JiT sizes (the table itself lives in jitkit.config, free of torch)."""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch
from torch import nn

from jitkit.config import MODEL_NAMES, ModelConfig, model_config
from jitkit.models.jit import JiT

__all__ = [
    "build_model",
    "compiler_available",
    "count_params",
    "list_models",
    "model_config",
    "precision_for_model",
]


def build_model(cfg: ModelConfig | str, device: torch.device | str | None = None, **overrides) -> JiT:
    """Build a JiT from a ModelConfig or a registered name (``"JiT-B/16"``).

    ``device="meta"`` builds the structure without memory (for parameter counts and key checks).
    """
    if isinstance(cfg, str):
        cfg = model_config(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return JiT(cfg)
    model = JiT(cfg)
    return model.to(device) if device is not None else model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def list_models() -> list[tuple[str, ModelConfig, int]]:
    """(name, config at its default image size, parameter count) for every registered size."""
    out = []
    for name in MODEL_NAMES:
        cfg = model_config(name)
        out.append((name, cfg, count_params(build_model(cfg, device="meta"))))
    return out


def compiler_available(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``torch.compile`` (inductor) can build kernels for ``device``, and why not.

    CPU kernels are C++ built by the host compiler ($CXX, else g++/clang++/c++ on PATH); CUDA kernels are
    Triton's. Other devices (MPS, …) are reported as unsupported so callers stay eager there.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
        found = next((n for n in names if shutil.which(n)), None)
        return (True, found) if found else (False, f"no C++ compiler on PATH (looked for {', '.join(names)})")
    if kind == "cuda":
        if importlib.util.find_spec("triton") is None:
            return False, "the triton package is not installed"
        return True, "triton"
    return False, f"torch.compile is not used on {kind} by jitkit"


def precision_for_model(
    precision: str, device: torch.device | str, cfg: ModelConfig, images: int
) -> tuple[str, dict]:
    """``precision`` resolved for a JiT of ``cfg`` running ``images`` images per forward on ``device``, and
    the record of the decision (:func:`jitkit.runtime.choose_precision`). On a CPU ``auto`` measures the
    model's MLP linear ([images·tokens, width] · [width, mlp hidden]) in bf16 and fp32
    (:func:`jitkit.models.linear.bf16_linear_speedup`)."""
    from jitkit.models.linear import bf16_linear_speedup
    from jitkit.runtime import choose_precision

    rows = max(1, int(images)) * (cfg.num_patches + cfg.in_context_len)

    def probe() -> dict:
        return bf16_linear_speedup(rows, cfg.hidden_size, 2 * cfg.mlp_hidden)

    return choose_precision(precision, device, probe)
