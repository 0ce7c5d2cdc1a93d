"""jitkit.bench.flops: the analytic FLOP counter against a hand count and torch's own counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jitkit.bench.flops import flops_per_image, forward_macs
from jitkit.models.jit import JiT


def test_flops_match_hand_count(tiny):
    cfg = tiny.model_config(hidden_size=16, bottleneck_dim=4)
    # N = (8/4)² = 4 tokens, D = 16, SwiGLU hidden m = int(int(16·4)·2/3) = 42, bottleneck b = 4, C = 3,
    # p = 4, L = 2 in-context tokens from block 1 on (block 0: T = 4, block 1: T = 6).
    assert cfg.mlp_hidden == 42
    patch = 4 * (3 * 4 * 4 * 4 + 4 * 16)  # N·(C·p²·b + b·D) = 4·(192 + 64) = 1024
    time_mlp = 256 * 16 + 16 * 16  # F·D + D·D = 4352
    # block 0, T = 4: adaLN 16·96 + qkv 4·16·48 + q·kᵀ 4·4·16 + a·v 4·4·16 + proj 4·16·16
    #                 + SwiGLU 4·16·84 + 4·42·16  = 1536 + 3072 + 256 + 256 + 1024 + 5376 + 2688
    block0 = 1536 + 3072 + 256 + 256 + 1024 + 5376 + 2688  # 14208
    # block 1, T = 6: 1536 + 6·16·48 + 6·6·16 + 6·6·16 + 6·16·16 + 6·16·84 + 6·42·16
    block1 = 1536 + 4608 + 576 + 576 + 1536 + 8064 + 4032  # 20928
    final = 16 * 32 + 4 * 16 * 48  # adaLN D·2D + N·D·p²C = 512 + 3072
    macs = patch + time_mlp + block0 + block1 + final
    assert macs == 44096
    assert sum(forward_macs(cfg).values()) == macs
    fl = flops_per_image(cfg)
    assert fl["forward"] == 2 * macs == 88192
    assert fl["train"] == 3 * fl["forward"]


@pytest.mark.parametrize("change", [{}, {"in_context_len": 0, "depth": 3, "patch_size": 2}])
def test_flops_match_torch_flop_counter(tiny, change):
    # torch's own counter over the matmul/conv/bmm ops of an actual forward (math attention path so that
    # the two attention products are plain matmuls), for a batch of 3
    cfg = tiny.model_config(**change)
    net = JiT(cfg.replace(attention="math-fp32")).eval()
    B = 3
    x = torch.randn(B, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, torch.rand(B), torch.randint(0, cfg.num_classes, (B,)))
    assert fc.get_total_flops() == B * flops_per_image(cfg)["forward"]


def test_jit_b16_flops_order_of_magnitude():
    from jitkit.config import model_config

    f = flops_per_image(model_config("JiT-B/16"))["forward"]
    # B/16 at 256 px is about 25 GMACs per image (the paper lists ~25 Gflops counted as MACs)
    assert 45e9 < f < 55e9
