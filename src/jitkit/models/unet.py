"""The shapes study's U-Net baseline (issue #20): a small class-conditional DDPM U-Net for 16×16×3 images.

(x_t [B,C,S,S], t [B] int DDPM step in [0, T), y [B] int) → ε̂ [B,C,S,S] — the same contract as
``jitkit.models.dit.DiT``, so the study trains and samples it with the DiT's DDPM unchanged. It never sees
the noise schedule.

Architecture (Ho et al.'s DDPM U-Net, shrunk; defaults = the study's baseline):

    conv_in     conv3×3 C → c₀                                       16×16
    down        per level ℓ: one ResBlock → c_ℓ = base·mult_ℓ (its output is a skip), then, except at the
                lowest level, a stride-2 conv3×3 (16 → 8 → 4)
    middle      ResBlock → self-attention (``attn_heads`` heads of width c/heads, SDPA) → ResBlock,
                at the lowest resolution (4×4 = 16 tokens)
    up          per level, lowest first: concat the level's skip → ResBlock → c_ℓ, then, except at the
                highest level, nearest ×2 upsampling + conv3×3 c_ℓ → c_ℓ₋₁
    out         GroupNorm → SiLU → conv3×3 c₀ → C, **zero-initialised** (weight and bias)

ResBlock(c_in → c_out): h = conv3×3(SiLU(GN(x))); h += Linear(SiLU(e)) (the per-channel conditioning
bias); h = conv3×3(SiLU(GN(h))); out = h + skip(x) with skip a 1×1 conv when c_in ≠ c_out, else identity.
The conditioning e = t_emb + y_emb with t_emb = MLP(SiLU)(sinusoid(t), ``freq_dim`` = 64 frequencies as
the study's DiT) and y_emb a plain class table (no null-class row, as the study's DiT; ``null_class``
adds one) initialised at N(0, ``class_init_std``²) = N(0, 1) for the reason given in ``jitkit.models.dit``.

Zero-initialised output conv: the untrained network predicts ε̂ = 0 for every input (as the DiT's
adaLN-Zero final layer does), so the first DDPM loss is the mean square of the noise itself (≈ 1) whatever
the random init of the body, and the early steps do not fight a random ε̂. Only the output conv starts at zero; every block's
second conv keeps PyTorch's default init, so the gradient reaching the output conv's weight (its input
activations times the loss gradient) is non-zero from the first step and the rest learns from step two.

Parameter count of the default (base 24, mults (1, 1, 2) → channels 24 / 24 / 48 at 16 / 8 / 4, E = 96,
4 attention heads, GroupNorm groups 8, S = 16, C = 3, 16 classes): 320,091, i.e. −1.11 % of the study's DiT
(323,696; ``tests/test_models_unet.py`` checks the ±5 % window):

    t MLP           (64·96 + 96) + (96·96 + 96)                       =  15,552
    class table     16·96                                             =   1,536
    conv_in         3·24·9 + 24                                       =     672
    down ResBlocks  24→24, 24→24, 24→48 (1×1 skip)                    =  62,880
    downsamples     24·24·9 + 24, twice                               =  10,416
    middle          ResBlock 48→48 ×2 (46,416 each) + attention 9,504 = 102,336
    up ResBlocks    96→48, 48→24, 48→24 (each with a 1×1 skip)        = 110,400
    upsample convs  48→24, 24→24                                      =  15,600
    out             GroupNorm 48 + conv3×3 24→3 651                   =     699
    total                                                             = 320,091

(Tried on the way: base 32 with mults (1, 2, 2) holds 772 k; base 24 with (1, 2) and E = 160, 315 k, runs
attention on 64 tokens; base 20 with (1, 2, 2) needs 4 GroupNorm groups.)

Shape key: B batch, C image channels, S side, c feature channels, E conditioning width, N = s² tokens of an
s×s feature map, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jitkit.config import ConfigBase, ConfigError
from jitkit.models.layers import TimestepEmbedder


@dataclass(frozen=True)
class UNetConfig(ConfigBase):
    """Architecture of the study's U-Net (defaults: its baseline, 320,091 parameters)."""

    img_size: int = 16
    in_channels: int = 3
    base_channels: int = 24
    channel_mults: tuple[int, ...] = (1, 1, 2)  # one entry per resolution: 16, 8, 4
    emb_dim: int = 96  # E: the width of t_emb + y_emb
    freq_dim: int = 64
    attn_heads: int = 4  # self-attention heads at the lowest resolution; 0: no attention
    groups: int = 8  # GroupNorm groups (every channel count must be divisible by it)
    num_classes: int = 16
    null_class: bool = False  # add a null-class row (classifier-free guidance); the study has none
    class_init_std: float = 1.0  # as DiTConfig.class_init_std

    def validate(self) -> None:
        self.check_at_least(1, "img_size", "in_channels", "base_channels", "emb_dim", "groups", "num_classes")
        self.check_at_least(0, "attn_heads")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ConfigError(
                f"UNet channel_mults must be positive integers, found {list(self.channel_mults)}"
            )
        down = 2 ** (len(self.channel_mults) - 1)
        if self.img_size % down:
            raise ConfigError(
                f"UNet img_size ({self.img_size}) must be divisible by 2^(levels−1) = {down} "
                f"for {len(self.channel_mults)} channel_mults; use fewer levels"
            )
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise ConfigError(
                f"UNet channel counts {list(self.channels)} must be divisible by groups ({self.groups}); "
                f"change base_channels or groups"
            )
        if self.attn_heads and self.channels[-1] % self.attn_heads:
            raise ConfigError(
                f"UNet lowest-level channels ({self.channels[-1]}) must be divisible by attn_heads "
                f"({self.attn_heads})"
            )
        if self.freq_dim % 2:
            raise ConfigError(f"UNet freq_dim must be even, found {self.freq_dim}")
        if not self.class_init_std > 0:
            raise ConfigError(f"UNet class_init_std must be > 0, found {self.class_init_std}")

    @property
    def channels(self) -> tuple[int, ...]:
        """c_ℓ per level, highest resolution first."""
        return tuple(self.base_channels * m for m in self.channel_mults)


class ResBlock(nn.Module):
    """GN → SiLU → conv3×3 (+ per-channel bias from e) → GN → SiLU → conv3×3, plus a (1×1 conv) skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B,c_out,s,s]
        h = h + self.emb(e)[:, :, None, None]  # [B,c_out] → broadcast over s×s
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention2d(nn.Module):
    """GN → 1×1 qkv → multi-head SDPA over the s² positions → 1×1 proj, added to the input."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, c, s, _ = x.shape
        H = self.heads
        qkv = self.qkv(self.norm(x)).reshape(B, 3, H, c // H, s * s)  # [B,3,H,c/H,N]
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B,H,N,c/H]
        o = F.scaled_dot_product_attention(q, k, v)  # [B,H,N,c/H]
        o = o.transpose(-1, -2).reshape(B, c, s, s)  # [B,c,s,s]
        return x + self.proj(o)


class UNet(nn.Module):
    """The study's U-Net baseline: (x_t, t, y) → ε̂, with t the integer DDPM step."""

    def __init__(self, cfg: UNetConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = (cfg or UNetConfig()).replace(**overrides)  # checks keys, coerces and validates
        self.cfg = cfg
        chs, E, g = cfg.channels, cfg.emb_dim, cfg.groups
        self.t_embedder = TimestepEmbedder(E, cfg.freq_dim)
        self.y_embedder = nn.Embedding(cfg.num_classes + int(cfg.null_class), E)
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        c_prev = chs[0]
        for i, c in enumerate(chs):
            self.down_blocks.append(ResBlock(c_prev, c, E, g))
            if i < len(chs) - 1:
                self.downsamples.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c

        self.mid1 = ResBlock(chs[-1], chs[-1], E, g)
        self.mid_attn: nn.Module = (
            SelfAttention2d(chs[-1], cfg.attn_heads, g) if cfg.attn_heads else nn.Identity()
        )
        self.mid2 = ResBlock(chs[-1], chs[-1], E, g)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        c_prev = chs[-1]
        for i in reversed(range(len(chs))):
            self.up_blocks.append(ResBlock(c_prev + chs[i], chs[i], E, g))
            if i > 0:
                self.upsamples.append(nn.Conv2d(chs[i], chs[i - 1], 3, padding=1))
            c_prev = chs[i - 1] if i > 0 else chs[0]

        self.norm_out = nn.GroupNorm(g, chs[0])
        self.conv_out = nn.Conv2d(chs[0], cfg.in_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """PyTorch's defaults everywhere except: the class table at N(0, class_init_std²), and the output
        conv at exactly zero (weight and bias), so the untrained network outputs ε̂ = 0 (module docstring)."""
        nn.init.normal_(self.y_embedder.weight, std=self.cfg.class_init_std)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C, S = self.cfg.in_channels, self.cfg.img_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (C, S, S):
            raise ValueError(f"UNet expects images of shape [B, {C}, {S}, {S}], received {list(x.shape)}")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(
                f"UNet expects t and y of shape [{x.shape[0]}], received {list(t.shape)} and {list(y.shape)}"
            )
        e = self.t_embedder(t) + self.y_embedder(y)  # [B,E]
        h = self.conv_in(x)  # [B,c₀,S,S]
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, e)  # [B,c_ℓ,s,s]
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)  # [B,c_ℓ,s/2,s/2]
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for i, block in enumerate(self.up_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), e)  # [B,c_ℓ,s,s]
            if i < len(self.upsamples):
                h = self.upsamples[i](F.interpolate(h, scale_factor=2, mode="nearest"))  # [B,c_ℓ−1,2s,2s]
        return self.conv_out(F.silu(self.norm_out(h)))  # [B,C,S,S]
