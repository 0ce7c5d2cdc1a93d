"""The JiT network: a plain transformer from a noisy image z_t to the clean image x̂ (x-prediction).

It knows nothing of noise schedules or losses: (z_t [B,C,S,S], t [B] in [0,1], y [B] int) → x̂ [B,C,S,S].
Parameter names equal the reference release's so official weights load unchanged.

In-context tokens: L = ``in_context_len`` class tokens are prepended before block ``in_context_start``.
``in_context_start == depth`` (allowed by the config) would put them after the last block, where nothing
reads them: such a model has no in-context tokens at all (no ``in_context_posemb`` parameter, T = N in
every block), as ``in_context_len = 0``. A parameter without a gradient would otherwise stop DDP at its
second step ("Expected to have finished reduction in the prior iteration").

Shape key: B batch, C channels, S image side, p patch, G = S/p grid side, N = G² image tokens,
L in-context tokens, T = L + N tokens, D width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from jitkit.config import ModelConfig
from jitkit.models.layers import (
    Attention,
    BottleneckPatchEmbed,
    LabelEmbedder,
    RMSNorm,
    SwiGLU,
    TimestepEmbedder,
    adaln_chunks,
    init_adaln_zero,
    modulate,
    rope_tables,
    unpatchify,
)
from jitkit.models.linear import Linear, cpu_linear_backend


class JiTBlock(nn.Module):
    """RMSNorm → adaLN-Zero (shift, scale, gate ×2) → attention (QK-norm, RoPE) → SwiGLU."""

    def __init__(self, cfg: ModelConfig, dropout: bool) -> None:
        super().__init__()
        D = cfg.hidden_size
        attn_drop = cfg.attn_dropout if dropout else 0.0
        proj_drop = cfg.proj_dropout if dropout else 0.0
        self.norm1 = RMSNorm(D)
        self.attn = Attention(D, cfg.num_heads, attn_drop, proj_drop, kind=cfg.attention)
        self.norm2 = RMSNorm(D)
        self.mlp = SwiGLU(D, cfg.mlp_hidden, drop=proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = adaln_chunks(self.adaLN_modulation(c), 6)  # each [B,D], contiguous
        x = torch.addcmul(x, g1.unsqueeze(1), self.attn(modulate(self.norm1(x), sh1, sc1), cos, sin))
        return torch.addcmul(x, g2.unsqueeze(1), self.mlp(modulate(self.norm2(x), sh2, sc2)))


class FinalLayer(nn.Module):
    """RMSNorm → adaLN shift/scale → linear to p·p·C per token."""

    def __init__(self, hidden: int, patch: int, out_ch: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(hidden)
        self.linear = Linear(hidden, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = adaln_chunks(self.adaLN_modulation(c), 2)  # each [B,D], contiguous
        return self.linear(modulate(self.norm_final(x), shift, scale))


class JiT(nn.Module):
    """Just image Transformer (Li & He, arXiv 2511.13720), state-dict compatible with the reference."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D, G, p, C = cfg.hidden_size, cfg.grid_size, cfg.patch_size, cfg.in_channels
        self.num_classes = cfg.num_classes
        self.x_embedder = BottleneckPatchEmbed(p, C, cfg.bottleneck_dim, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D)
        # fixed 2-D sin-cos absolute position (a parameter that is not trained, as in the reference)
        self.pos_embed = nn.Parameter(torch.zeros(1, G * G, D), requires_grad=False)
        # tokens inserted after the last block would enter none: then there are none (module docstring)
        self.in_context_len = cfg.in_context_len if cfg.in_context_start < cfg.depth else 0
        self.in_context_start = cfg.in_context_start
        if self.in_context_len > 0:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, cfg.in_context_len, D))
        q = cfg.depth // 4
        self.blocks = nn.ModuleList([JiTBlock(cfg, dropout=q <= i < 3 * q) for i in range(cfg.depth)])
        self.final_layer = FinalLayer(D, p, C)
        cos, sin = rope_tables(G, cfg.head_dim, 0)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        cos_p, sin_p = rope_tables(G, cfg.head_dim, self.in_context_len)
        self.register_buffer("rope_cos_prefix", cos_p, persistent=False)
        self.register_buffer("rope_sin_prefix", sin_p, persistent=False)
        self.grad_checkpoint = cfg.grad_checkpoint
        self.frozen = False  # compile_blocks(freeze=True): an inference-only network
        self._whole_forward = None  # compile_blocks(whole=True): the forward compiled as one graph
        self.initialize_weights()
        self._register_load_state_dict_pre_hook(self._drop_unused_in_context)

    def _drop_unused_in_context(self, state_dict: dict, prefix: str, *args) -> None:
        """Checkpoints written before in-context tokens after the last block were dropped (module docstring)
        carry their never-used ``in_context_posemb``: ignore it when loading such a config."""
        if self.in_context_len == 0:
            state_dict.pop(prefix + "in_context_posemb", None)

    # -- initialisation (all of it here, as the reference) ------------------------------------------------
    def initialize_weights(self) -> None:
        """The reference's: DiT's (:func:`init_adaln_zero`), then the in-context tokens ~ N(0, 0.02²)."""
        patch_convs = (self.x_embedder.proj1, self.x_embedder.proj2)
        init_adaln_zero(self, patch_convs, self.y_embedder.embedding_table.weight, self.t_embedder.mlp)
        if self.in_context_len > 0:
            nn.init.normal_(self.in_context_posemb, std=0.02)

    # -- compilation -----------------------------------------------------------------------------------------
    def compile_blocks(self, freeze: bool = False, whole: bool = False) -> JiT:
        """``torch.compile`` each block and the final layer in place, or with ``whole`` (training too) or
        ``freeze`` (inference) the whole forward as one graph (state-dict keys and values unchanged).

        ``whole=True`` for training: one graph for embedders, blocks and final layer, forward and backward, so
        inductor fuses across block boundaries (a residual add with the next norm) and one guard check runs per
        call instead of 13. JiT-B/16 bf16 training at batch 8: 1.03× the per-block step (interleaved A/B,
        2026-12-07), but the first call compiles for about 90 s on 2 cores instead of 10–30 s, and every new
        batch size compiles again (training batches keep one size).

        ``freeze=True`` is for inference only (sampling, the forward benchmark): inductor's freezing takes the
        weights as constants of the graph and pre-packs them for the matrix units (oneDNN's blocked layouts),
        and each attention computes q and k with de-interleaved channels (:meth:`Attention.deinterleave`; the
        state dict is unchanged). The weights must not change afterwards (a later ``load_state_dict`` would
        not be seen) and no gradient flows through.

        Static shapes (``dynamic=False``): the blocks before and after the in-context tokens see two token
        counts, and the automatic dynamic-shape recompilation that the second one would trigger fails in the
        backward of the CPU flash-attention kernel (torch 2.13). Identical blocks share one compiled graph per
        token count. On CPU inductor needs a C++ compiler; see :func:`compiler_available`.

        Frozen, the whole forward is one graph (embedders and unpatchify fused in), compiled once per batch
        size (sampling: B images outside the guidance interval, 2B inside, a smaller last batch). The
        per-function recompile limit is raised to 32 either way (torch's default of 8 would make a ninth shape
        fall back to eager without a word).
        """
        cpu_linear_backend()  # resolve the CPU linear backend (a timing when "auto") before tracing
        dynamo_config = torch._dynamo.config
        for limit in ("recompile_limit", "cache_size_limit"):  # the new name (torch ≥ 2.6) and the old one
            if hasattr(dynamo_config, limit):
                setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 32))
        self.frozen = freeze
        if freeze:  # one graph for the whole network: the embedders and the unpatchify fused in too
            cpu = self.pos_embed.device.type == "cpu"
            for name in ("rope_cos", "rope_sin", "rope_cos_prefix", "rope_sin_prefix"):
                table = getattr(self, name)  # [T, h]: the pairs' angles alone (once), contiguous, which the
                if table.shape[-1] == self.blocks[0].attn.head_dim:  # compiled RoPE kernel reads as vectors
                    setattr(self, name, table[..., 0::2].contiguous())
            for block in self.blocks:
                block.attn.deinterleave()  # RoPE on contiguous halves (folded into the frozen weights)
                if cpu:
                    block.mlp.split_products()  # the SwiGLU's input product as two half-wide ones
            # the unbound function, called with the model (as for whole=True): a deep copy runs its own weights
            self._frozen_forward = torch.compile(JiT._forward, dynamic=False)
            return self
        if whole:
            # the unbound function, called with the model: a deep copy of this model then runs its own weights
            # (a compiled bound method would keep calling the original's)
            self._whole_forward = torch.compile(JiT._forward, dynamic=False)
            return self
        for block in self.blocks:
            block.compile(dynamic=False)
        self.final_layer.compile(dynamic=False)
        return self

    # -- shape checks ----------------------------------------------------------------------------------------
    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        C, S = self.cfg.in_channels, self.cfg.img_size
        if x.dim() != 4 or x.shape[1] != C or x.shape[2] != S or x.shape[3] != S:
            raise ValueError(
                f"JiT ({self.cfg.name}) expects images of shape [B, {C}, {S}, {S}], received {list(x.shape)}"
            )
        B = x.shape[0]
        if t.shape != (B,):
            raise ValueError(f"t must have shape [{B}] (one time per image), received {list(t.shape)}")
        if y.shape != (B,):
            raise ValueError(f"y must have shape [{B}] (one label per image), received {list(y.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, t, y)
        if not self.frozen:
            if self._whole_forward is not None:
                return self._whole_forward(self, x, t, y)
            return self._forward(x, t, y)
        if torch.is_grad_enabled():
            raise RuntimeError(
                "this JiT was compiled with compile_blocks(freeze=True) for inference: its weights are constants "
                "of the compiled graphs, so it runs under torch.no_grad() only (build it again to train)"
            )
        # inductor reads `freezing` from its global config when it compiles (on the first call of each shape;
        # torch.compile's options= does not reach it in torch 2.13): set for this model's compilations only
        from torch._inductor import config as inductor_config

        with inductor_config.patch(freezing=True):
            return self._frozen_forward(self, x, t, y)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y_emb = self.y_embedder(y)  # [B,D]
        c = self.t_embedder(t) + y_emb  # [B,D]
        h = self.x_embedder(x) + self.pos_embed  # [B,N,D]
        cos, sin = self.rope_cos, self.rope_sin
        for i, block in enumerate(self.blocks):
            if self.in_context_len > 0 and i == self.in_context_start:
                prefix = y_emb.unsqueeze(1).expand(-1, self.in_context_len, -1) + self.in_context_posemb
                h = torch.cat([prefix, h], dim=1)  # [B,L+N,D]
                cos, sin = self.rope_cos_prefix, self.rope_sin_prefix
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, cos, sin, use_reentrant=False)
            else:
                h = block(h, c, cos, sin)
        if self.in_context_len > 0:
            h = h[:, self.in_context_len :]  # drop the prefix: [B,N,D]
        return unpatchify(
            self.final_layer(h, c), self.cfg.grid_size, self.cfg.patch_size, self.cfg.in_channels
        )
