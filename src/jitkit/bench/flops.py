"""Analytic FLOPs of a JiT forward pass, counted from the config.

How it is counted (per image):

* FLOPs = 2 · MACs of every matrix product — the linear layers, the two patch-embedding convolutions
  (as matmuls), and the two attention products q·kᵀ and softmax·v.
* Element-wise work (norms, RoPE, SiLU, softmax, modulation, residuals) and the embedding lookup are not
  counted; they are O(T·D) against O(T·D²) for the matmuls.
* Training = 3 × forward (the backward of a matmul costs two matmuls of the same size); activation
  checkpointing recomputes the forward but is not counted (MFU measures useful work).

Symbols: N = (S/p)² image tokens, L in-context tokens, T = N (blocks before ``in_context_start``) or
N + L (from it on), D width, m SwiGLU hidden, b bottleneck, C channels, p patch, F = 256 time frequencies.

    patch embed      N·(C·p²·b + b·D)
    time embed       F·D + D·D
    per block (T)    adaLN D·6D + qkv T·D·3D + scores T·T·D + attn·v T·T·D + proj T·D·D
                     + SwiGLU T·D·2m + T·m·D
    final layer      adaLN D·2D + N·D·(p²·C)
"""

from __future__ import annotations

from jitkit.config import ModelConfig

TIME_FREQS = 256


def block_macs(cfg: ModelConfig, tokens: int) -> dict[str, int]:
    """MACs of one JiT block over ``tokens`` tokens (one image)."""
    D, m, T = cfg.hidden_size, cfg.mlp_hidden, tokens
    return {
        "adaLN": D * 6 * D,
        "qkv": T * D * 3 * D,
        "attn_scores": T * T * D,  # H heads · T·T·h, h = D/H
        "attn_values": T * T * D,
        "proj": T * D * D,
        "mlp": T * D * 2 * m + T * m * D,
    }


def forward_macs(cfg: ModelConfig) -> dict[str, int]:
    """MACs of one image's forward pass, by part."""
    N, D, C, p, b = cfg.num_patches, cfg.hidden_size, cfg.in_channels, cfg.patch_size, cfg.bottleneck_dim
    L = cfg.in_context_len
    parts = {
        "patch_embed": N * (C * p * p * b + b * D),
        "time_embed": TIME_FREQS * D + D * D,
        "blocks": 0,
        "final": D * 2 * D + N * D * p * p * C,
    }
    for i in range(cfg.depth):
        T = N + (L if (L > 0 and i >= cfg.in_context_start) else 0)
        parts["blocks"] += sum(block_macs(cfg, T).values())
    return parts


def flops_per_image(cfg: ModelConfig) -> dict[str, float]:
    """``{"forward": 2·MACs, "train": 3·forward}`` per image (see the module docstring)."""
    fwd = 2 * sum(forward_macs(cfg).values())
    return {"forward": float(fwd), "train": float(3 * fwd)}
