"""The attention paths (fused SDPA, the math form, the reference's float32 math) agree, forward and backward."""

from __future__ import annotations

import pytest
import torch

from jitkit.config import ModelConfig
from jitkit.models.jit import JiT
from jitkit.models.layers import attention_math, attention_math_fp32


def _cfg(**kw) -> ModelConfig:
    base = dict(
        name="test",
        img_size=16,
        patch_size=4,
        hidden_size=64,
        depth=4,
        num_heads=4,
        bottleneck_dim=16,
        in_context_len=4,
        in_context_start=2,
        num_classes=5,
    )
    base.update(kw)
    return ModelConfig(**base)


def test_functional_paths_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 8, generator=g, requires_grad=True) for _ in range(3))
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    b = attention_math_fp32(q, k, v)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the reference formula written out: softmax(q kᵀ/√h) v
    ref = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v
    torch.testing.assert_close(b, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(a.shape, generator=g)
    ga = torch.autograd.grad((a * w).sum(), (q, k, v))
    gb = torch.autograd.grad((b * w).sum(), (q, k, v))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_math_fp32_keeps_input_dtype_and_computes_in_fp32():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 10, 8, generator=g).bfloat16() for _ in range(3))
    out = attention_math_fp32(q, k, v)
    assert out.dtype == torch.bfloat16
    exact = torch.softmax(q.float() @ k.float().transpose(-2, -1) / 8**0.5, -1) @ v.float()
    # only the final cast to bf16 rounds: error within bf16 resolution of the fp32 result
    assert (out.float() - exact).abs().max() <= 2**-7 * exact.abs().max()


def test_math_products_in_the_input_dtype_softmax_in_fp32():
    """``math``: in float32 the same numbers as the fused kernel, forward and backward; in bf16 the two products
    run in bf16 (the probabilities rounded to bf16 once), within a bf16-sized error of the exact result."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 20, 8, generator=g, requires_grad=True) for _ in range(3))
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    b = attention_math(q, k, v)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    w = torch.randn(a.shape, generator=g)
    for x, y in zip(
        torch.autograd.grad((a * w).sum(), (q, k, v)), torch.autograd.grad((b * w).sum(), (q, k, v))
    ):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    qb, kb, vb = (u.detach().bfloat16() for u in (q, k, v))
    out = attention_math(qb, kb, vb)
    assert out.dtype == torch.bfloat16
    exact = torch.softmax(qb.float() @ kb.float().transpose(-2, -1) / 8**0.5, -1) @ vb.float()
    assert 0 < (out.float() - exact).abs().max() <= 2**-5 * exact.abs().max()


@pytest.mark.parametrize("kind,grad_checkpoint", [("math-fp32", False), ("math-fp32", True), ("math", False)])
def test_network_paths_agree_forward_and_gradients(kind, grad_checkpoint):
    torch.manual_seed(0)
    net_a = JiT(_cfg(attention="sdpa", grad_checkpoint=grad_checkpoint))
    net_b = JiT(_cfg(attention=kind))
    # non-zero adaLN / output weights so that every block contributes (zero-init would hide differences)
    with torch.no_grad():
        for p in net_a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net_b.load_state_dict(net_a.state_dict())
    net_a.train()
    net_b.train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.rand(3, generator=g)
    y = torch.randint(0, 6, (3,), generator=g)
    out_a, out_b = net_a(x, t, y), net_b(x, t, y)
    assert out_a.abs().max() > 0.1  # not a trivial zero output
    torch.testing.assert_close(out_a, out_b, atol=2e-5, rtol=1e-4)
    w = torch.randn(out_a.shape, generator=g)
    (out_a * w).sum().backward()
    (out_b * w).sum().backward()
    for (name, pa), pb in zip(net_a.named_parameters(), net_b.parameters()):
        if pa.grad is None:
            assert pb.grad is None, name
            continue
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-3, msg=f"gradient of {name}")


def test_unknown_attention_kind_is_rejected():
    with pytest.raises(ValueError, match="attention"):
        JiT(_cfg(attention="flash3"))


def test_rope_matches_the_spec_formula_forward_and_backward():
    from jitkit.models.layers import apply_rope, rope_tables

    cos, sin = rope_tables(4, 8, prefix=2)  # [2 + 16, 8]
    g = torch.Generator().manual_seed(3)
    # a strided q as the attention produces it: [B,T,3,H,h] → permuted [B,H,T,h]
    qkv = torch.randn(2, 18, 3, 3, 8, generator=g).permute(2, 0, 3, 1, 4)
    u = qkv[0].clone().requires_grad_(True)
    uf = u.detach().clone().requires_grad_(True)
    # spec: u·cos θ + rot(u)·sin θ, rot maps (u_2m, u_2m+1) → (−u_2m+1, u_2m)
    rot = torch.stack((-uf[..., 1::2], uf[..., 0::2]), dim=-1).flatten(-2)
    ref = uf * cos + rot * sin
    out = apply_rope(u, cos, sin)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert torch.equal(out[..., :2, :], u[..., :2, :])  # prefix tokens: no rotation
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(u.grad, uf.grad, atol=1e-6, rtol=1e-6)
    # bf16 input: computed in fp32, returned in bf16
    assert apply_rope(u.detach().bfloat16(), cos, sin).dtype == torch.bfloat16
