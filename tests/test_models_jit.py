"""The JiT network: golden equivalence with the reference, official configs, init, shapes, errors."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from jitkit.config import ConfigError, DiffusionConfig, ModelConfig, model_config
from jitkit.diffusion import Denoiser
from jitkit.models import JiT, build_model, count_params
from jitkit.models.jit import JiTBlock
from jitkit.models.layers import adaln_chunks, apply_rope, rope_tables, sincos_2d
from jitkit.runtime.device import mps_available

OFFICIAL = ["JiT-B/16", "JiT-B/32", "JiT-L/16", "JiT-L/32", "JiT-H/16", "JiT-H/32"]


def golden_model(shared_dir):
    meta = json.loads((shared_dir / "golden" / "jit_small.json").read_text())
    mc = meta["model_config"]
    cfg = ModelConfig(
        name="golden",
        img_size=mc["input_size"],
        patch_size=mc["patch_size"],
        hidden_size=mc["hidden_size"],
        depth=mc["depth"],
        num_heads=mc["num_heads"],
        mlp_ratio=mc["mlp_ratio"],
        bottleneck_dim=mc["bottleneck_dim"],
        in_context_len=mc["in_context_len"],
        in_context_start=mc["in_context_start"],
        num_classes=mc["num_classes"],
    )
    tensors = load_file(str(shared_dir / "golden" / "jit_small.safetensors"))
    prefix = meta["state_prefix"]
    d = meta["denoiser"]
    dcfg = DiffusionConfig(
        t_eps=d["t_eps"], noise_scale=d["noise_scale"], P_mean=d["P_mean"], P_std=d["P_std"]
    )
    den = Denoiser(JiT(cfg), dcfg, cfg.num_classes)
    den.load_state_dict(
        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True
    )
    return den.eval(), tensors, meta


@pytest.mark.parametrize("attention", ["sdpa", "math-fp32"])
def test_golden_network_output(shared_dir, attention):
    den, g, _ = golden_model(shared_dir)
    for blk in den.net.blocks:
        blk.attn.kind = attention
    with torch.no_grad():
        out = den.net(g["input.x"], g["input.t"], g["input.y"])
    assert (out - g["output.net"]).abs().max().item() < 1e-4


def test_golden_network_in_bf16_stays_close_to_the_reference(shared_dir):
    """The inference path of precision bf16 (autocast, matmul weights kept in bf16) on the golden small JiT:
    within 2e-2 of the reference's float32 output at every element and 1 % in RMS (measured: 9e-3 and
    0.44 %); the float32 golden tests above stay exact."""
    from jitkit.diffusion.generate import cast_for_inference

    den, g, _ = golden_model(shared_dir)
    cast_for_inference(den, "bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = den.net(g["input.x"], g["input.t"], g["input.y"]).float()
    ref = g["output.net"]
    assert (out - ref).abs().max().item() < 2e-2
    assert ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item() < 1e-2


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_golden_samples(shared_dir, method):
    from jitkit.config import SamplerConfig
    from jitkit.diffusion import sample

    den, g, meta = golden_model(shared_dir)
    s = meta["sampling"]
    cfg = SamplerConfig(method=method, steps=s["steps"], cfg=s["cfg"], interval=tuple(s["interval"]))
    z = sample(den.predict, g["sample.z0"], g["sample.labels"], cfg, den.null_class, t_eps=s["t_eps"])
    assert (z - g[f"sample.{method}"]).abs().max().item() < 1e-3


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_configs_match_reference_state_dicts(shared_dir, name):
    ref = json.loads((shared_dir / "golden" / "official_state_dicts.json").read_text())[name]
    cfg = model_config(name, img_size=ref["img_size"])
    den = Denoiser(build_model(cfg, device="meta"), DiffusionConfig(), cfg.num_classes)
    shapes = {k: list(v.shape) for k, v in den.state_dict().items()}
    assert shapes == ref["keys"]
    assert count_params(den) == ref["num_params"]
    assert count_params(den, trainable_only=True) == ref["trainable_params"]


def test_b16_param_count_literal():
    assert count_params(build_model("JiT-B/16", device="meta")) == 131_320_320


def test_rope_buffers_are_not_persisted():
    net = build_model("JiT-T/4")
    keys = set(net.state_dict())
    assert not any("rope" in k for k in keys)
    assert "pos_embed" in keys and not net.pos_embed.requires_grad


def test_pos_embed_formula():
    # written from the spec, independently: token (i, j) = concat(E(D/2, j), E(D/2, i))
    D, G = 8, 3
    table = sincos_2d(D, G)

    def E(d, p):
        ws = [10000 ** (-k / (d / 2)) for k in range(d // 2)]
        return [math.sin(p * w) for w in ws] + [math.cos(p * w) for w in ws]

    for i in range(G):
        for j in range(G):
            expect = torch.tensor(E(D // 2, j) + E(D // 2, i))
            assert torch.allclose(table[i * G + j], expect.float(), atol=1e-6)


def test_rope_rotation_matches_spec():
    G, h, L = 3, 8, 2
    cos, sin = rope_tables(G, h, prefix=L)
    u = torch.randn(1, 1, L + G * G, h)
    out = apply_rope(u, cos, sin)
    assert torch.equal(out[..., :L, :], u[..., :L, :])  # prefix tokens are not rotated
    dim = h // 2
    f = [10000 ** (-2 * k / dim) for k in range(dim // 2)]
    i, j = 2, 1  # token (row 2, column 1)
    ang = [i * fk for fk in f for _ in (0, 1)] + [j * fk for fk in f for _ in (0, 1)]
    v = u[0, 0, L + i * G + j]
    expect = []
    for m in range(h // 2):
        a, b = v[2 * m].item(), v[2 * m + 1].item()
        expect += [a * math.cos(ang[2 * m]) - b * math.sin(ang[2 * m])]
        expect += [b * math.cos(ang[2 * m + 1]) + a * math.sin(ang[2 * m + 1])]
    assert torch.allclose(out[0, 0, L + i * G + j], torch.tensor(expect), atol=1e-5)


def test_output_is_zero_at_initialisation():
    torch.manual_seed(0)
    net = build_model("JiT-T/4")
    x = torch.randn(2, 3, 32, 32)
    out = net(x, torch.rand(2), torch.tensor([0, 1]))
    assert out.shape == x.shape and out.abs().max().item() == 0.0


def test_dropout_only_in_middle_half():
    net = build_model("JiT-T/4", depth=8, proj_dropout=0.2, attn_dropout=0.1)
    drops = [blk.attn.proj_drop.p for blk in net.blocks]
    assert drops == [0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0]
    assert [blk.attn.attn_drop for blk in net.blocks][2:6] == [0.1] * 4


def test_wrong_image_size_and_channels_raise_value_error():
    net = build_model("JiT-T/4")
    t, y = torch.rand(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\].*\[2, 3, 16, 16\]"):
        net(torch.randn(2, 3, 16, 16), t, y)
    with pytest.raises(ValueError, match=r"received \[2, 1, 32, 32\]"):
        net(torch.randn(2, 1, 32, 32), t, y)
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(2, 3, 32, 32), torch.rand(3), y)


def test_patch_divisibility_is_a_value_error():
    with pytest.raises(ValueError, match="divisible by patch_size.*img_size=30, patch_size=4"):
        model_config("JiT-T/4", img_size=30)


def test_unknown_model_lists_registered():
    with pytest.raises(ConfigError, match="registered models: .*JiT-B/16.*JiT-H/32"):
        build_model("JiT-X/16")


def test_runs_in_bfloat16_autocast_on_cpu():
    torch.manual_seed(0)
    net = build_model("JiT-T/4")
    for p in net.final_layer.parameters():  # make the output non-trivial
        torch.nn.init.normal_(p, std=0.02)
    x, t, y = torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([0, 3])
    with torch.no_grad():
        ref = net(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, t, y)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item() + 1e-2


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = build_model("JiT-T/4")
    for p in a.parameters():
        if p.dim() > 1 and p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    b = build_model("JiT-T/4", grad_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([0, 3])
    for m in (a, b):
        m.train()
        m(x, t, y).pow(2).mean().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is not None:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_in_context_tokens_change_with_label():
    torch.manual_seed(0)
    net = build_model("JiT-T/4")
    for blk in net.blocks:
        torch.nn.init.normal_(blk.adaLN_modulation[-1].weight, std=0.02)
    torch.nn.init.normal_(net.final_layer.linear.weight, std=0.02)
    net.eval()
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    with torch.no_grad():
        a = net(x, t, torch.tensor([0]))
        b = net(x, t, torch.tensor([1]))
    assert (a - b).abs().max().item() > 1e-4


def test_compiler_available_reports_a_missing_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from jitkit.models.registry import compiler_available

    monkeypatch.setenv("CXX", "/nonexistent/c++-compiler")
    ok, why = compiler_available("cpu")
    assert not ok and "/nonexistent/c++-compiler" in why
    assert compiler_available("mps")[0] is False


@pytest.fixture
def no_compiler(monkeypatch):
    """torch.compile stood in for by a wrapper that, like it, closes over the function it was given (no C++
    compiler needed, ~1 s instead of a compilation)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a, **k: fn(*a, **k))


@pytest.mark.parametrize("mode", ["whole", "freeze"])  # torch.compile stood in for: no compiler, ~1 s
def test_a_copy_of_a_compiled_model_runs_its_own_weights(no_compiler, mode: str) -> None:
    """compile_blocks(whole=True) and compile_blocks(freeze=True) keep a compiled function, not a compiled bound
    method: a deep copy (an EMA replica, a second sampler) must not keep calling the original's forward.
    torch.compile is stood in for by a wrapper that, like it, closes over the function it was given."""
    torch.manual_seed(0)
    cfg = model_config("JiT-T/4", img_size=8, num_classes=3, depth=2)
    model = build_model(cfg).compile_blocks(**{mode: True})
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1)
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 2])
    with torch.no_grad():
        assert not torch.allclose(twin(x, t, y), model(x, t, y))
        model.load_state_dict(twin.state_dict())
        torch.testing.assert_close(model(x, t, y), twin(x, t, y))


@pytest.mark.parametrize(
    "whole",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # whole: inductor builds the whole graph, ~30 s
)
def test_compiled_blocks_match_eager_forward_and_backward(whole: bool) -> None:
    """compile_blocks() keeps the state-dict keys and gives the eager outputs and gradients (in-context
    tokens included, so the blocks see two token counts); so does compile_blocks(whole=True), the whole
    forward one graph for training (train.compile_scope=model), which stays trainable (not frozen)."""
    from jitkit.models.registry import compiler_available

    ok, why = compiler_available("cpu")
    if not ok:
        pytest.skip(f"torch.compile needs a C++ compiler here: {why}")
    torch.manual_seed(0)
    cfg = model_config("JiT-T/4", img_size=8, num_classes=3, depth=2, in_context_len=2, in_context_start=1)
    eager = build_model(cfg)
    compiled = build_model(cfg)
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    compiled.compile_blocks(whole=whole)
    assert list(compiled.state_dict()) == keys and not compiled.frozen
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 2])
    out_e, out_c = eager(x, t, y), compiled(x, t, y)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    (out_e**2).sum().backward()
    (out_c**2).sum().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters()):
        if p_e.grad is not None:
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-4, atol=1e-5, msg=name)


def _eager_and_frozen() -> tuple:
    """(config, eager JiT, the same weights compiled with freeze=True): a small JiT with in-context tokens,
    its weights moved away from adaLN-Zero's identity blocks so that attention and RoPE matter."""
    torch.manual_seed(0)
    cfg = model_config("JiT-T/4", img_size=8, num_classes=3, depth=2, in_context_len=2, in_context_start=1)
    eager = build_model(cfg).eval()
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(0.05 * torch.randn_like(p))
    frozen = build_model(cfg).eval()
    frozen.load_state_dict(eager.state_dict())
    return cfg, eager, frozen.compile_blocks(freeze=True)


@pytest.mark.slow  # inductor builds and freezes the whole forward: ~20-40 s on 2 cores
@pytest.mark.env_sensitive  # needs a C++ compiler for inductor
def test_frozen_compile_matches_eager_and_refuses_gradients() -> None:
    """compile_blocks(freeze=True) (sampling's path: the whole forward frozen, q/k channels de-interleaved for
    RoPE) gives the eager output, leaves the state dict as it was, and refuses to run with gradients."""
    from jitkit.models.registry import compiler_available

    ok, why = compiler_available("cpu")
    if not ok:
        pytest.skip(f"torch.compile needs a C++ compiler here: {why}")
    cfg, eager, frozen = _eager_and_frozen()
    state = frozen.state_dict()
    assert list(state) == list(eager.state_dict())
    assert all(torch.equal(state[k], v) for k, v in eager.state_dict().items())
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([0, 2, 3])  # 3: the null class
    with torch.no_grad():
        out_e, out_f = eager(x, t, y), frozen(x, t, y)
        assert (out_e - eager(x, t, torch.tensor([1, 2, 3]))).abs().max() > 1e-3  # labels matter
    torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="freeze=True.*no_grad"):
        frozen(x, t, y)


def test_deinterleaved_qk_channels_give_the_same_attention() -> None:
    """Attention.deinterleave() (eager here: the row gather runs on every call) reorders q and k channels
    within each head and rotates contiguous halves: the same output as the interleaved RoPE."""
    from jitkit.models.layers import Attention, rope_tables

    torch.manual_seed(0)
    attn = Attention(32, heads=2, kind="math-fp32").eval()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    cos, sin = rope_tables(3, 16, prefix=1)  # 1 + 9 tokens
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        ref = attn(x, cos, sin)
        attn.deinterleave()
        out = attn(x, cos, sin)
    assert "qkv_rows" not in attn.state_dict()
    assert (ref - attn.proj(torch.zeros(2, 10, 32))).abs().max() > 1e-2  # not a trivial output
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# -- in-context tokens that would enter no block ----------------------------------------------------------

_DDP_WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from jitkit.config import DiffusionConfig, ModelConfig
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.jit import JiT
    from jitkit.runtime.dist import barrier, cleanup, init, wrap_model
    info = init(torch.device("cpu"), timeout_s=60)
    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny", img_size=8, patch_size=4, hidden_size=32, depth=2, num_heads=2,
                      bottleneck_dim=8, in_context_len=2, in_context_start=int(sys.argv[1]), num_classes=3)
    den = wrap_model(Denoiser(JiT(cfg), DiffusionConfig(), 3), info)
    opt = torch.optim.SGD(den.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(info.rank)
    for step in range(3):
        x, y = torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 3, (2,), generator=g)
        opt.zero_grad()
        den(x, y).backward()
        opt.step()
        print("step", step + 1, flush=True)
    barrier()  # neither rank tears the group down while the other still uses it
    cleanup(info)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("start", [1, 2])  # depth 2: start 2 = after the last block
def test_ddp_trains_three_steps_whatever_the_in_context_start(start):
    """Two gloo processes (as under torchrun) train a tiny JiT in DDP for 3 steps. With in_context_start ==
    depth the tokens would enter no block, so their parameter would never get a gradient and DDP would fail
    at step 2 ("Expected to have finished reduction in the prior iteration"): the model must not create it."""
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_WORKER, str(start)],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (out, err[-3000:])
        assert out.split("\n")[-2] == "step 3", out


def test_in_context_start_at_depth_means_no_in_context_tokens():
    """start == depth: no in_context_posemb, and the network is the one without in-context tokens (same
    weights, same output); a state dict that still carries the unused parameter loads."""
    cfg = model_config("JiT-T/4", img_size=8, num_classes=3, depth=2, in_context_len=2, in_context_start=2)
    torch.manual_seed(0)
    late = build_model(cfg)
    torch.manual_seed(0)
    none = build_model(cfg.replace(in_context_len=0))
    assert "in_context_posemb" not in late.state_dict()
    assert [n for n, _ in late.named_parameters()] == [n for n, _ in none.named_parameters()]
    for blk in late.blocks:
        torch.nn.init.normal_(blk.adaLN_modulation[-1].weight, std=0.05)
    torch.nn.init.normal_(late.final_layer.linear.weight, std=0.05)
    none.load_state_dict(late.state_dict())
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 2])
    assert torch.equal(late(x, t, y), none(x, t, y))
    old = dict(late.state_dict(), in_context_posemb=torch.zeros(1, 2, cfg.hidden_size))
    late.load_state_dict(old)  # strict: the stale key is dropped, nothing else is missing
    tokens = build_model(cfg.replace(in_context_start=1))
    assert tokens.in_context_posemb.shape == (1, 2, cfg.hidden_size)


# -- adaLN chunks --------------------------------------------------------------------------------------------


def test_adaln_chunks_are_contiguous_and_equal_the_chunks():
    mod = torch.randn(3, 6 * 8)
    parts = adaln_chunks(mod, 6)
    assert len(parts) == 6
    for got, want in zip(parts, mod.chunk(6, dim=-1)):
        assert got.is_contiguous() and got.shape == (3, 8)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="divisible by 6, found 40"):
        adaln_chunks(torch.randn(3, 40), 6)


def _reference_block(blk: JiTBlock, x, c, cos, sin):
    """One JiT block written out with each adaLN vector copied into its own contiguous tensor (no views)."""
    lin = blk.adaLN_modulation[-1]
    mod = torch.nn.functional.linear(torch.nn.functional.silu(c), lin.weight, lin.bias)  # [B, 6D]
    D = x.shape[-1]
    sh1, sc1, g1, sh2, sc2, g2 = (
        torch.empty(c.shape[0], D, dtype=mod.dtype, device=mod.device).copy_(mod[:, k * D : (k + 1) * D])
        for k in range(6)
    )
    h = blk.norm1(x) * (1 + sc1[:, None, :]) + sh1[:, None, :]
    x = x + g1[:, None, :] * blk.attn(h, cos, sin)
    h = blk.norm2(x) * (1 + sc2[:, None, :]) + sh2[:, None, :]
    return x + g2[:, None, :] * blk.mlp(h)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "mps",
            marks=pytest.mark.skipif(not mps_available(), reason="no MPS device on this machine"),
        ),
    ],
)
def test_block_gradients_match_a_float64_contiguous_reference(device):
    """The gradients of one JiT block (adaLN included) against a float64 CPU reference that gives every adaLN
    vector its own contiguous tensor. A toy DiT study saw silently wrong adaLN gradients on MPS when strided
    chunk views fed ``addcmul``; MPS is not available on the CI machine, so there this checks CPU only (run
    on a Mac, the ``mps`` case checks the device the report was about)."""
    cfg = model_config("JiT-T/4", img_size=8, num_classes=3, hidden_size=32, num_heads=2, depth=2)
    torch.manual_seed(0)
    blk = JiTBlock(cfg, dropout=False)
    for p in blk.parameters():
        torch.nn.init.normal_(p, mean=1.0 if p.dim() == 1 else 0.0, std=0.2)
    ref = copy.deepcopy(blk).double()
    blk = blk.to(device)
    G, L, D = cfg.grid_size, 2, cfg.hidden_size
    cos, sin = rope_tables(G, cfg.head_dim, L)
    x = torch.randn(3, L + G * G, D, dtype=torch.float64)
    c = torch.randn(3, D, dtype=torch.float64)
    w = torch.randn(3, L + G * G, D, dtype=torch.float64)  # a weighting, so each output element counts
    x32 = x.float().to(device).requires_grad_()
    c32 = c.float().to(device).requires_grad_()
    (blk(x32, c32, cos.to(device), sin.to(device)) * w.float().to(device)).sum().backward()
    x64, c64 = x.clone().requires_grad_(), c.clone().requires_grad_()
    (_reference_block(ref, x64, c64, cos.double(), sin.double()) * w).sum().backward()
    pairs = [("x", x32.grad, x64.grad), ("c", c32.grad, c64.grad)]
    pairs += [(n, p.grad, q.grad) for (n, p), q in zip(blk.named_parameters(), ref.parameters())]
    assert ref.adaLN_modulation[-1].weight.grad.abs().max() > 0.1  # the adaLN path carries gradient
    for name, got, want in pairs:
        scale = want.abs().max().item()
        err = (got.cpu().double() - want).abs().max().item()
        assert err <= 1e-4 * scale + 1e-6, (name, err, scale)


@pytest.mark.parametrize("weight_shape", [(24,), (2, 1, 1, 1, 24)])
def test_cpu_rms_norm_function_matches_the_formula_in_float64(weight_shape):
    """The hand-written RMSNorm backward used for eager CPU training (``_RMSNormCPU``) against autograd of
    x · rsqrt(mean(x²) + eps) · w in float64; w of a norm ([h]) and of q and k together ([2, 1, 1, 1, h])."""
    from jitkit.models.layers import _RMSNormCPU

    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 5, 24) * 3
    w = torch.randn(weight_shape)
    g = torch.randn(2, 3, 2, 5, 24)
    x32, w32 = x.clone().requires_grad_(), w.clone().requires_grad_()
    y32 = _RMSNormCPU.apply(x32, w32, 1e-6)
    y32.backward(g)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y64 = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w64
    y64.backward(g.double())
    for got, want in ((y32, y64), (x32.grad, x64.grad), (w32.grad, w64.grad)):
        assert got.shape == want.shape
        assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_rms_norm_uses_the_cpu_function_only_where_autograd_records():
    from jitkit.models.layers import RMSNorm

    norm = RMSNorm(16)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(4, 7, 16)
    y = norm(x)
    assert type(y.grad_fn).__name__ == "_RMSNormCPUBackward"
    with torch.no_grad():
        y0 = norm(x)
    # without autograd torch's kernel runs: the same float32 forward, bit for bit
    assert torch.equal(y0, torch.nn.functional.rms_norm(x, (16,), norm.weight.detach(), norm.eps))
    assert torch.equal(y.detach(), y0)


def test_frozen_swiglu_runs_its_input_product_as_two_halves(no_compiler, monkeypatch) -> None:
    """compile_blocks(freeze=True) on a CPU computes each SwiGLU's a and b as two half-wide products (faster
    there, see SwiGLU.split_products) with the same numbers; with autograd on, the one wide product stays."""
    import jitkit.models.layers as layers

    torch.manual_seed(0)
    cfg = model_config("JiT-T/4", img_size=8, num_classes=3, depth=2)
    eager = build_model(cfg).eval()
    frozen = build_model(cfg).eval()
    frozen.load_state_dict(eager.state_dict())
    frozen.compile_blocks(freeze=True)
    assert all(b.mlp.split for b in frozen.blocks) and not any(b.mlp.split for b in eager.blocks)
    widths: list[int] = []
    real = layers.linear
    monkeypatch.setattr(layers, "linear", lambda x, w, *a: widths.append(w.shape[0]) or real(x, w, *a))
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(frozen(x, t, y), eager(x, t, y), rtol=1e-5, atol=1e-6)
    hidden = cfg.mlp_hidden
    assert widths.count(hidden) == 2 * cfg.depth  # a and b of every block, each `hidden` wide
    mlp = frozen.blocks[0].mlp
    h = torch.randn(2, 5, cfg.hidden_size, requires_grad=True)
    widths.clear()
    mlp(h).sum().backward()  # training: the wide product, and gradients flow
    assert widths.count(hidden) == 0 and mlp.w12.weight.grad is not None


def test_frozen_model_keeps_the_rope_angles_as_contiguous_halves(no_compiler) -> None:
    """compile_blocks(freeze=True) keeps each RoPE table as the pairs' angles alone ([T, h/2], contiguous: the
    compiled kernel read the even columns of [T, h] one element at a time), once even if called twice, and
    apply_rope_halves gives the same rotation with either table; the frozen output is the eager one."""
    from jitkit.models.layers import apply_rope_halves

    cfg, eager, frozen = _eager_and_frozen()
    frozen.compile_blocks(freeze=True)  # a second time: the tables are halved once
    h = cfg.hidden_size // cfg.num_heads
    for name in ("rope_cos", "rope_sin", "rope_cos_prefix", "rope_sin_prefix"):
        full, half = getattr(eager, name), getattr(frozen, name)
        assert half.shape == (full.shape[0], h // 2) and half.is_contiguous(), name
        assert torch.equal(half, full[:, 0::2]), name
    u = torch.randn(2, 3, full.shape[0], h)
    assert torch.equal(
        apply_rope_halves(u, frozen.rope_cos_prefix, frozen.rope_sin_prefix),
        apply_rope_halves(u, eager.rope_cos_prefix, eager.rope_sin_prefix),
    )
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(frozen(x, t, y), eager(x, t, y), rtol=1e-5, atol=1e-6)
