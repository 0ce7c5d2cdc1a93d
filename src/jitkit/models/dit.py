"""The toy DiT baseline of the shapes study (Peebles & Xie's DiT, shrunk): an ε-predicting transformer.

(x_t [B,C,S,S], t [B] int DDPM step in [0, T), y [B] int) → ε̂ [B,C,S,S]. It never sees the noise
schedule; ``jitkit.diffusion.ddpm`` owns that.

Architecture (DiT with adaLN-Zero): patch embedding (p×p stride-p conv with bias) + a learned position
table (initialised to the 2-D sin-cos table); c = t_emb + y_emb with t_emb = MLP(SiLU)(sinusoid(t)) and
y_emb a plain class table; each block: LayerNorm without affine → modulate(shift, scale) → attention →
gate, the same for a GELU(tanh) MLP of ratio 4, with (shift, scale, gate)×2 = SiLU → Linear(D, 6D) of c;
final layer: LayerNorm → modulate by SiLU → Linear(D, 2D) → Linear(D, p²C). All adaLN outputs and the final
linear start at zero (adaLN-Zero), so the untrained network outputs ε̂ = 0.

Parameter count of the study's baseline (patch 4, D = 64, depth 4, 4 heads, S = 16, C = 3, 16 classes,
F = 64 timestep frequencies, no null class row, learned position table), with N = (16/4)² = 16 tokens:

    patch conv      3·4·4·64 + 64                 =   3,136
    pos table       16·64                         =   1,024
    t MLP           (64·64 + 64) + (64·64 + 64)   =   8,320
    class table     16·64                         =   1,024
    per block       qkv 64·192+192 = 12,480; proj 64·64+64 = 4,160; fc1 64·256+256 = 16,640;
                    fc2 256·64+64 = 16,448; adaLN 64·384+384 = 24,960            →  74,688
    4 blocks                                      = 298,752
    final layer     adaLN 64·128+128 = 8,320; linear 64·48+48 = 3,120            →  11,440
    total                                         = 323,696   (the study's number, exactly)

With DiT's usual F = 256 frequencies the t MLP alone would hold 20,608 (total 335,984); with a null class
row for guidance add 64. The count identifies F = 64, 16 class rows, and a learned (counted) position table.

The class table starts at N(0, 1) (``class_init_std``), not DiT's N(0, 0.02²): DiT trains for 400k+
steps, the study for 750. With 0.02, after the study's 30 epochs the class rows have norm ~0.4 against a
t-embedding of norm 7–17, the adaLN modulations of two classes differ by ~1 % of those of two noise levels,
swapping the label changes the ε-loss by < 1 %, and samples get colour right at chance (0.24); with 1.0 the
colour is right 98 % of the time (the study's "correct colours"). Neither changes the parameter count.

Shape key: B batch, C channels, S image side, p patch, G = S/p, N = G² tokens, D width, H heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jitkit.config import ConfigBase, ConfigError
from jitkit.models.layers import adaln_chunks, init_adaln_zero, modulate, unpatchify
from jitkit.models.linear import Linear


@dataclass(frozen=True)
class DiTConfig(ConfigBase):
    """Architecture of the toy DiT (defaults: the shapes study's baseline, 323,696 parameters)."""

    img_size: int = 16
    patch_size: int = 4
    in_channels: int = 3
    hidden_size: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 16
    freq_dim: int = 64
    null_class: bool = False  # add a null-class row (classifier-free guidance); the study has none
    learn_pos: bool = True
    # std of the class table's N(0, std²) init: 1.0 (PyTorch's nn.Embedding default), not DiT's 0.02. At the
    # study's budget (750 Adam steps of lr ≤ 5e-4) rows started at 0.02 stay ~0.05 per coordinate while the
    # t-MLP output grows to norm 7–17, so c carries no usable class signal and the DiT ignores y (docstring).
    class_init_std: float = 1.0

    def validate(self) -> None:
        self.check_at_least(1, "img_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"DiT img_size must be divisible by patch_size, found {self.img_size} and {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"DiT hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if not self.class_init_std > 0:
            raise ConfigError(f"DiT class_init_std must be > 0, found {self.class_init_std}")
        if self.hidden_size % 4 or self.freq_dim % 2:
            raise ConfigError(
                f"DiT needs hidden_size % 4 == 0 and an even freq_dim, found {self.hidden_size}, {self.freq_dim}"
            )

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's sinusoid of an integer (or real) step t: f_k = max_period^(−k/half), concat(cos(t f), sin(t f)).

    t [B] → [B, dim].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


class DiTAttention(nn.Module):
    """Multi-head self-attention: qkv Linear(D, 3D) → SDPA → proj Linear(D, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [3,B,H,N,h]
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)  # [B,H,N,h]
        return self.proj(o.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """adaLN-Zero block: LN → modulate → attention → gate; LN → modulate → MLP(GELU tanh) → gate."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = DiTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(Linear(dim, hidden), nn.GELU(approximate="tanh"), Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = adaln_chunks(self.adaLN_modulation(c), 6)  # each [B,D], contiguous
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        x = x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x


class DiTFinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_ch: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))
        self.linear = Linear(dim, patch * patch * out_ch)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = adaln_chunks(self.adaLN_modulation(c), 2)  # each [B,D], contiguous
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The toy DiT baseline: (x_t, t, y) → ε̂, with t the integer DDPM step."""

    def __init__(self, cfg: DiTConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = (cfg or DiTConfig()).replace(**overrides)  # checks keys, coerces and validates
        self.cfg = cfg
        D, p, C, G = cfg.hidden_size, cfg.patch_size, cfg.in_channels, cfg.grid_size
        self.x_embedder = nn.Conv2d(C, D, kernel_size=p, stride=p, bias=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, G * G, D), requires_grad=cfg.learn_pos)
        self.t_mlp = nn.Sequential(Linear(cfg.freq_dim, D), nn.SiLU(), Linear(D, D))
        self.y_embedder = nn.Embedding(cfg.num_classes + int(cfg.null_class), D)
        self.blocks = nn.ModuleList([DiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = DiTFinalLayer(D, p, C)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (:func:`init_adaln_zero`) with the class table at N(0, class_init_std²)."""
        init_adaln_zero(self, (self.x_embedder,), self.y_embedder.weight, self.t_mlp, self.cfg.class_init_std)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C, S = self.cfg.in_channels, self.cfg.img_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (C, S, S):
            raise ValueError(f"DiT expects images of shape [B, {C}, {S}, {S}], received {list(x.shape)}")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(
                f"DiT expects t and y of shape [{x.shape[0]}], received {list(t.shape)} and {list(y.shape)}"
            )
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B,N,D]
        c = self.t_mlp(timestep_embedding(t, self.cfg.freq_dim).to(h.dtype)) + self.y_embedder(y)  # [B,D]
        for block in self.blocks:
            h = block(h, c)
        return unpatchify(
            self.final_layer(h, c), self.cfg.grid_size, self.cfg.patch_size, self.cfg.in_channels
        )
