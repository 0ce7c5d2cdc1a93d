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
    "bf16_block_speedup",
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
    precision: str, device: torch.device | str, cfg: ModelConfig, images: int, *, train: bool = False
) -> tuple[str, dict]:
    """``precision`` resolved for a JiT of ``cfg`` running ``images`` images per forward on ``device``
    (``train``: forward and backward under autocast; else the inference path with bf16 weights), and the
    record of the decision (:func:`jitkit.runtime.choose_precision`). On a CPU ``auto`` measures one block of
    this model both ways (:func:`bf16_block_speedup`)."""
    from jitkit.runtime import choose_precision

    return choose_precision(precision, device, lambda: bf16_block_speedup(cfg, images, train=train))


_block_probe: dict[tuple, dict] = {}


def bf16_block_speedup(cfg: ModelConfig, images: int, *, train: bool = False, repeats: int = 3) -> dict:
    """How much faster one JiT block of ``cfg`` (attention, SwiGLU, norms, adaLN: the casts and element-wise
    work that decide small models included) runs on the CPU under bf16 autocast than in float32, on
    ``images`` images; ``train`` times forward + backward with float32 master weights (as training runs),
    otherwise a no-grad forward with the linear weights kept in bf16 (as sampling runs). Also the speed-up of
    a large product (what the CPU's bf16 units can do at best). Best of ``repeats`` after a warm-up, cached
    per shape and thread count: ~10 ms for the shapes model, ~1-2 s for JiT-B/16 at batch 8.

    Returns ``{"speedup", "peak_speedup", "fp32_ms", "bf16_ms", "probe"}``; ``speedup`` is None (the block not
    timed) where the large product already rules bf16 out. ``JITKIT_BF16_PROBE=off`` skips
    the measurement (no speed-up: ``auto`` means fp32 on every CPU; the test suite sets it).
    """
    import copy

    from jitkit.models.jit import JiTBlock
    from jitkit.models.layers import rope_tables
    from jitkit.models.linear import _best_seconds, bf16_peak_speedup, bf16_probe_off
    from jitkit.runtime.device import CPU_BF16_PEAK_RATIO

    tokens = cfg.num_patches + cfg.in_context_len
    images = max(1, int(images))
    what = (
        f"one block, {'forward+backward' if train else 'inference'}, [{images}, {tokens}, {cfg.hidden_size}]"
    )
    if bf16_probe_off():
        return {"speedup": 1.0, "peak_speedup": 1.0, "probe": f"{what}: JITKIT_BF16_PROBE=off"}
    peak = bf16_peak_speedup()
    if peak < CPU_BF16_PEAK_RATIO:  # no fast bf16 units: auto is fp32 whatever the model, so it is not timed
        return {"speedup": None, "peak_speedup": peak, "probe": f"{what}: not timed (no fast bf16 units)"}
    key = (cfg.hidden_size, cfg.num_heads, cfg.mlp_hidden, cfg.attention, tokens, images, train)
    key += (torch.get_num_threads(),)
    if key not in _block_probe:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            block = JiTBlock(cfg, dropout=False)
            for p in block.parameters():  # adaLN-Zero would zero the gates: give every weight values
                torch.nn.init.normal_(p, std=0.02)
            x = torch.randn(images, tokens, cfg.hidden_size)
            c = torch.randn(images, cfg.hidden_size)
        cos, sin = rope_tables(cfg.grid_size, cfg.head_dim, tokens - cfg.num_patches)
        half = copy.deepcopy(block)
        for m in half.modules():
            if isinstance(m, nn.Linear):
                m.to(torch.bfloat16)
        xg = x.clone().requires_grad_(train)

        def run(net: nn.Module, bf16: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if train:
                    net(xg, c, cos, sin).float().square().mean().backward()
                    return
                with torch.no_grad():
                    net(x, c, cos, sin)

        f32 = _best_seconds(lambda: run(block, False), repeats)
        b16 = _best_seconds(lambda: run(block if train else half, True), repeats)
        _block_probe[key] = {
            "speedup": round(f32 / b16, 3),
            "fp32_ms": round(1e3 * f32, 2),
            "bf16_ms": round(1e3 * b16, 2),
        }
    return {**_block_probe[key], "peak_speedup": peak, "probe": what}
