"""Building blocks of JiT: RMSNorm, 2-D RoPE, SwiGLU, attention, embedders, sin-cos tables, and the
adaLN-Zero initialisation that JiT and the toy DiT share (:func:`init_adaln_zero`).

Shape key: B batch, T tokens (prefix + image), N image tokens, D width, H heads, h head dim, G grid side,
L in-context (prefix) tokens, F timestep frequencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jitkit.models.linear import Linear, linear

# --- fixed tables -----------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """E(dim, p) = concat(sin(p·ω_k), cos(p·ω_k)), ω_k = 10000^(−k/(dim/2)), k < dim/2.  pos [N] → [N, dim]."""
    half = dim // 2
    omega = torch.arange(half, dtype=torch.float64) / half
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Absolute position table [G·G, dim]; token (i, j) = concat(E(dim/2, j), E(dim/2, i)), row-major."""
    idx = torch.arange(grid)
    rows = idx.repeat_interleave(grid)  # i for token i·G + j
    cols = idx.repeat(grid)  # j
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def rope_tables(grid: int, head_dim: int, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [prefix + G·G, h] of the 2-D rotary embedding.

    Per axis dim = h/2, f_k = 10000^(−2k/dim) for k = 0 … dim/2−1, each frequency repeated
    twice: angles(p) = [p f_0, p f_0, p f_1, p f_1, …]. Token (i, j) gets concat(angles(i), angles(j)).
    Prefix tokens get cos = 1, sin = 0 (no rotation).
    """
    dim = head_dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim/2]
    pos = torch.arange(grid, dtype=torch.float64)
    ang = (pos[:, None] * freqs[None, :]).repeat_interleave(2, dim=1)  # [G, dim]
    rows = ang[:, None, :].expand(grid, grid, dim)  # angle of row i
    cols = ang[None, :, :].expand(grid, grid, dim)  # angle of column j
    theta = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)  # [N, h]
    cos, sin = theta.cos(), theta.sin()
    if prefix:
        cos = torch.cat([torch.ones(prefix, head_dim, dtype=cos.dtype), cos])
        sin = torch.cat([torch.zeros(prefix, head_dim, dtype=sin.dtype), sin])
    return cos.float(), sin.float()


def apply_rope(u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """u·cos + rot(u)·sin where rot maps pairs (u_2m, u_2m+1) → (−u_2m+1, u_2m).  u [..., T, h], cos/sin [T, h].

    Both entries of a pair share one angle θ_m (cos[2m] = cos[2m+1]), so the rotation is the complex product
    (u_2m + i·u_2m+1)·(cos θ_m + i·sin θ_m): one kernel on a free view of u instead of splitting, negating and
    re-stacking the pairs. Computed in float32 (as the reference's fp32 tables promote it) and cast back.
    """
    uf = u.float()
    if uf.device.type == "mps" or torch.compiler.is_compiling():
        # no complex kernels on MPS, and inductor cannot fuse complex ops: the same formula with real tensors
        u1, u2 = uf.unflatten(-1, (-1, 2)).unbind(-1)  # [..., h/2] each
        rot = torch.stack((-u2, u1), dim=-1).flatten(-2)
        return (uf * cos.float() + rot * sin.float()).to(u.dtype)
    pairs = uf.unflatten(-1, (-1, 2))  # [..., T, h/2, 2] (a view)
    try:
        uc = torch.view_as_complex(pairs)
    except RuntimeError:  # strides that a complex view cannot express
        uc = torch.view_as_complex(pairs.contiguous())
    rot = torch.complex(cos[..., 0::2].float(), sin[..., 0::2].float())  # [T, h/2] e^{iθ}
    return torch.view_as_real(uc * rot).flatten(-2).to(u.dtype)


# --- layers -------------------------------------------------------------------------------------------------


class _RMSNormCPU(torch.autograd.Function):
    """y = x · r · w with r = rsqrt(mean(x²) + eps) over the last dim, x float32, w broadcastable to x ([h], or
    [2, 1, …, 1, h] for q and k together), with a hand-written backward:

        gx = r · (g·w − x̂ · mean(g·w · x̂)),   gw = Σ g · x̂ (summed to w's shape),   x̂ = x · r.

    torch 2.13's ``F.rms_norm`` on a CPU is a composite of ~20 operators with an autograd graph of as many
    backward nodes; for the small activations of the shapes model each costs more in dispatch and thread
    start-up than in arithmetic, and this function takes 0.6× its time forward + backward (a [64, 16, 96]
    activation: 414 vs 664 µs, 2 threads). The forward is bit-identical to ``F.rms_norm`` on CPU; gx agrees to
    float32 rounding. Used for eager training on a CPU (and on the meta device: :func:`_rms_norm`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        r = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))
        xn = x * r
        ctx.save_for_backward(xn, r, w)
        return xn * w

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        xn, r, w = ctx.saved_tensors
        gw = (g * xn).sum_to_size(w.shape) if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, gw, None
        gxn = g * w
        dot = (gxn * xn).mean(-1, keepdim=True)
        return gxn.sub_(xn * dot).mul_(r), gw, None


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x · rsqrt(mean(x²) + eps) · w over the last dim (w [h], or broadcastable to x), x float32:
    :class:`_RMSNormCPU` where autograd records on a CPU in eager mode, else torch's ``F.rms_norm`` (a fused
    kernel on GPUs; what inductor compiles).

    Also on the meta device, where the planner traces a training forward to count the bytes autograd saves
    (:mod:`jitkit.train.planner`): it then counts what a CPU saves, x̂ and r — as many bytes as GPUs' fused
    kernel saves (x and r), and fewer than the CPU composite of ``F.rms_norm`` keeps."""
    if (
        x.device.type in ("cpu", "meta")
        and torch.is_grad_enabled()
        and (x.requires_grad or w.requires_grad)
        and not torch.compiler.is_compiling()
    ):
        return _RMSNormCPU.apply(x, w, eps)
    if w.dim() == 1:
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return F.rms_norm(x, (x.shape[-1],), None, eps) * w


class RMSNorm(nn.Module):
    """u · rsqrt(mean(u²) + eps) · weight, computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x.float(), self.weight.float(), self.eps).to(x.dtype)


def rms_norm_qk(
    qk: torch.Tensor, q_norm: RMSNorm, k_norm: RMSNorm, channels: torch.Tensor | None = None
) -> torch.Tensor:
    """q_norm(qk[0]) and k_norm(qk[1]) in one pass over qk [2, ..., h] (the same float32 arithmetic as RMSNorm).

    ``channels``: the order of the h channels in ``qk`` when they are permuted (:meth:`Attention.deinterleave`);
    the norms' weights are taken in the same order (the mean over the channels does not depend on it).
    """
    if q_norm.eps != k_norm.eps:
        return torch.stack((q_norm(qk[0]), k_norm(qk[1])))
    w = torch.stack((q_norm.weight, k_norm.weight)).float()  # [2, h]
    if channels is not None:
        w = w[:, channels]
    return _rms_norm(qk.float(), w.view(2, *([1] * (qk.dim() - 2)), -1), q_norm.eps).to(qk.dtype)


def apply_rope_halves(u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` for channels stored de-interleaved: the pairs' first entries in ``u[..., :h/2]``, their
    second entries in ``u[..., h/2:]`` (pair m = (u_m, u_m+h/2)). The same rotation; two contiguous halves
    instead of interleaved pairs, which compiled kernels read and write with whole vectors. cos/sin are the
    usual tables [T, h] (both entries of a pair share one angle, so the even columns are the pairs' angles) or
    those angles alone, [T, h/2] contiguous, as frozen models keep them: a compiled kernel reads the even
    columns of a [T, h] table one element at a time."""
    uf = u.float()
    half = uf.shape[-1] // 2
    u1, u2 = uf[..., :half], uf[..., half:]
    if cos.shape[-1] != half:
        cos, sin = cos[..., 0::2], sin[..., 0::2]
    c, s = cos.float(), sin.float()
    return torch.cat((u1 * c - u2 * s, u2 * c + u1 * s), dim=-1).to(u.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B,T,D] · (1 + scale[B,D]) + shift[B,D], broadcast over tokens."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def adaln_chunks(mod: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """The n adaLN vectors (shift, scale, gate, …) of ``mod`` [B, n·D] as n *contiguous* [B, D] tensors.

    ``mod.chunk(n, dim=-1)`` would give views with row stride n·D; with such views as the broadcast operands
    of ``addcmul``/``modulate`` a toy DiT study saw silently wrong adaLN gradients on MPS. One copy into
    [n, B, D] (n·B·D values, small beside the activations) gives each vector its own dense storage; the
    values, hence the outputs, are the same as the chunks'.
    """
    B, nD = mod.shape
    if nD % n:
        raise ValueError(f"adaLN output width must be divisible by {n}, found {nD}")
    return mod.reshape(B, n, nD // n).transpose(0, 1).contiguous().unbind(0)  # n × [B,D], each contiguous


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t ∈ [0, 1] (used as is, F = 256 frequencies) → MLP(SiLU) → [B, D]."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, hidden), nn.SiLU(), Linear(hidden, hidden))
        half = freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        a = t.float()[:, None] * self.freqs[None, :]  # [B, F/2]
        emb = torch.cat([torch.cos(a), torch.sin(a)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Embedding(num_classes + 1, D); row num_classes is the null class of classifier-free guidance."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class BottleneckPatchEmbed(nn.Module):
    """p×p stride-p conv C→bottleneck (no bias), then 1×1 conv bottleneck→D (bias). [B,C,S,S] → [B,N,D]."""

    cpu_linear: str | None = None  # the float32 CPU backend of the 1×1 conv (see jitkit.models.linear)

    def __init__(self, patch: int, in_ch: int, bottleneck: int, hidden: int) -> None:
        super().__init__()
        self.proj1 = nn.Conv2d(in_ch, bottleneck, kernel_size=patch, stride=patch, bias=False)
        self.proj2 = nn.Conv2d(bottleneck, hidden, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj1(x).flatten(2).transpose(1, 2)  # [B,b,G,G] → [B,N,b], token i·G + j
        # the 1×1 conv as a linear on the tokens: the result is a contiguous [B,N,D] (a transposed view here
        # would make every element-wise op and norm of the blocks before the in-context tokens run strided)
        return linear(x, self.proj2.weight.flatten(1), self.proj2.bias, self.cpu_linear)  # [B,N,D]


class SwiGLU(nn.Module):
    """w12: D → 2·hidden (a, b); silu(a)·b; w3: hidden → D."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.w12 = Linear(dim, 2 * hidden)
        self.w3 = Linear(hidden, dim)
        self.ffn_dropout = nn.Dropout(drop)
        self.split = False  # split_products(): a and b as two products

    def split_products(self) -> None:
        """Compute a and b as two products of ``hidden`` outputs each instead of one of ``2·hidden`` (the rows of
        w12 as they are: same parameters, same state dict, the same numbers bit for bit). For frozen inference
        graphs on a CPU (``JiT.compile_blocks(freeze=True)``), where freezing makes the two halves two constant
        weights.

        Why: how a CPU product is split over the intra-op threads depends on its output width. On an Intel Xeon
        (2 threads, 2026-12-07) [2304, 768] · [768, 4096], JiT-B/16's SwiGLU input at batch 8, ran at 273-283
        GFLOP/s in float32 and as two [768, 2048] products at 331-349 (bf16 on oneDNN: 2,412-2,463 against
        2,596-2,620); at 1,152 rows the two were even, and a probe of the products alone was too noisy to decide
        on (0.99-1.20×). The frozen JiT-B/16 forward at batch 8, both ways compiled in one process and timed
        alternately: 1.07× faster in float32, 1.03× in bf16, outputs identical."""
        self.split = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split and not torch.is_grad_enabled():
            w, bias, h = self.w12.weight, self.w12.bias, self.w12.out_features // 2
            pin = self.w12.cpu_linear
            a, b = linear(x, w[:h], bias[:h], pin), linear(x, w[h:], bias[h:], pin)
        else:
            a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.ffn_dropout(F.silu(a) * b))


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias, QK-RMSNorm and 2-D RoPE.

    ``kind='sdpa'`` uses torch's fused scaled_dot_product_attention (flash / memory-efficient kernels where
    the device has them); ``kind='math-fp32'`` is the reference's way: softmax(q·kᵀ/√h) in float32.
    """

    def __init__(
        self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0, kind: str = "sdpa"
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.kind = kind
        self.qkv = Linear(dim, 3 * dim, bias=True)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def deinterleave(self) -> None:
        """Compute q and k with each head's channels de-interleaved (the RoPE pairs' first entries, then their
        second entries), for :func:`apply_rope_halves`. q·kᵀ sums over a head's channels, so one permutation of
        both q and k leaves the attention unchanged (up to the order of the sums); v is not permuted.

        The weights stay as they are (and so does the state dict): the forward takes the qkv rows in the new
        order, which inductor's freezing folds into the constant weights once. For frozen inference graphs
        only (``JiT.compile_blocks(freeze=True)``): eager or trained, it would gather the rows on every call.
        """
        h, H, D = self.head_dim, self.heads, self.heads * self.head_dim
        channels = torch.cat([torch.arange(0, h, 2), torch.arange(1, h, 2)])  # within a head
        heads = (torch.arange(H)[:, None] * h + channels[None, :]).flatten()  # [D] for q (and k, offset D)
        rows = torch.cat([heads, D + heads, torch.arange(2 * D, 3 * D)])
        device = self.qkv.weight.device
        self.register_buffer("qk_channels", channels.to(device), persistent=False)
        self.register_buffer("qkv_rows", rows.to(device), persistent=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        halves = hasattr(self, "qkv_rows")  # de-interleaved q/k channels (deinterleave())
        if halves:
            rows = self.qkv_rows
            b = None if self.qkv.bias is None else self.qkv.bias[rows]
            y = linear(x, self.qkv.weight[rows], b, self.qkv.cpu_linear)
        else:
            y = self.qkv(x)
        qkv = y.view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3,B,H,T,h]
        # split, not indexed: the backward of qkv[:2] and qkv[2] would zero-fill two [3,B,H,T,h] buffers and add
        # them; a split's backward is one concatenation
        qk, v = qkv.split([2, 1])
        v = v.squeeze(0)  # [B,H,T,h]
        # q and k normalised and rotated together: one kernel per step for both ([2,B,H,T,h])
        if halves:
            qk = apply_rope_halves(rms_norm_qk(qk, self.q_norm, self.k_norm, self.qk_channels), cos, sin)
        else:
            qk = apply_rope(rms_norm_qk(qk, self.q_norm, self.k_norm), cos, sin)
        q, k = qk.unbind(0)
        drop = self.attn_drop if self.training else 0.0
        if self.kind == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        elif self.kind == "math":
            o = attention_math(q, k, v, drop)
        else:
            o = attention_math_fp32(q, k, v, drop)
        o = o.transpose(1, 2).reshape(B, T, D)  # [B,T,D]
        return self.proj_drop(self.proj(o))


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ/√h) · v with both products in the inputs' dtype (bf16 matrix units under autocast) and the
    softmax in float32. Keeps the [T, T] probabilities for backward, which the fused kernels recompute."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [B,H,T,T]
    attn = scores.float().softmax(dim=-1)
    if drop > 0:
        attn = F.dropout(attn, p=drop)
    return attn.to(v.dtype) @ v


def attention_math_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ/√h) · v with the scores and softmax in float32 (the reference's attention)."""
    scale = q.shape[-1] ** -0.5
    scores = (q.float() * scale) @ k.float().transpose(-2, -1)  # [B,H,T,T]
    attn = scores.softmax(dim=-1)
    if drop > 0:
        attn = F.dropout(attn, p=drop)
    return (attn @ v.float()).to(q.dtype)


# --- initialisation ---------------------------------------------------------------------------------------


def init_adaln_zero(
    model: nn.Module,
    patch_convs: Sequence[nn.Conv2d],
    class_table: torch.Tensor,
    timestep_mlp: nn.Sequential,
    class_std: float = 0.02,
) -> None:
    """DiT's initialisation, shared by JiT and the toy DiT, whose modules carry DiT's names: ``model.pos_embed``,
    ``model.blocks`` (each with ``adaLN_modulation``), ``model.final_layer`` (``adaLN_modulation``, ``linear``)
    and ``model.cfg.grid_size``. In this order (the order of the random draws, so a seed gives the same weights):

    1. every ``nn.Linear`` of ``model``: xavier-uniform weight, zero bias;
    2. ``model.pos_embed`` [1, G·G, D] ← the 2-D sin-cos table (left alone on the meta device);
    3. each patch conv: xavier-uniform of its weight seen as [out, in·k·k], zero bias (if it has one);
    4. ``class_table`` ~ N(0, class_std²);
    5. the two Linears of ``timestep_mlp`` (indices 0 and 2) ~ N(0, 0.02²);
    6. adaLN-Zero: the last Linear of every block's ``adaLN_modulation``, and the final layer's
       ``adaLN_modulation`` and ``linear``, weight and bias zero (the untrained network outputs 0).

    Anything else (e.g. JiT's in-context tokens) the model initialises after this call.
    """

    def _linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    model.apply(_linear)
    pos_embed = model.pos_embed
    if pos_embed.device.type != "meta":
        pos_embed.data.copy_(sincos_2d(pos_embed.shape[-1], model.cfg.grid_size).unsqueeze(0))
    for conv in patch_convs:
        nn.init.xavier_uniform_(conv.weight.data.view(conv.weight.shape[0], -1))  # [out, in·k·k]
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    nn.init.normal_(class_table, std=class_std)
    nn.init.normal_(timestep_mlp[0].weight, std=0.02)
    nn.init.normal_(timestep_mlp[2].weight, std=0.02)
    zero = [block.adaLN_modulation[-1] for block in model.blocks]
    zero += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    for lin in zero:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)


def unpatchify(x: torch.Tensor, grid: int, patch: int, channels: int) -> torch.Tensor:
    """Tokens back to images: [B, G·G, p·p·C] → [B, C, G·p, G·p]; each token's vector is ordered (pixel row,
    pixel column, channel), the reference's layout."""
    B = x.shape[0]
    x = x.reshape(B, grid, grid, patch, patch, channels)
    x = torch.einsum("bijpqc->bcipjq", x)  # [B,C,G,p,G,p]
    return x.reshape(B, channels, grid * patch, grid * patch)
