import pytest
import torch

from jitkit.models.dit import DiT, DiTConfig


def test_study_baseline_parameter_count():
    # the study reports 323,696; the docstring of jitkit.models.dit derives it term by term
    assert sum(p.numel() for p in DiT().parameters()) == 323_696
    cfg = DiTConfig()
    D, N, p, C, K = cfg.hidden_size, cfg.grid_size**2, cfg.patch_size, cfg.in_channels, cfg.num_classes
    block = (D * 3 * D + 3 * D) + (D * D + D) + (D * 4 * D + 4 * D) + (4 * D * D + D) + (D * 6 * D + 6 * D)
    total = (C * p * p * D + D) + N * D + 2 * (cfg.freq_dim * D + D) + K * D + cfg.depth * block
    total += (D * 2 * D + 2 * D) + (D * p * p * C + p * p * C)
    assert total == 323_696
    # a null-class row adds exactly one embedding row
    assert sum(p.numel() for p in DiT(null_class=True).parameters()) == 323_696 + D


def test_forward_shapes_zero_init_and_conditioning():
    torch.manual_seed(0)
    m = DiT()
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 50, 199])
    y = torch.tensor([0, 7, 15])
    out = m(x, t, y)
    assert out.shape == x.shape
    assert out.abs().max().item() == 0.0  # adaLN-Zero: final linear starts at zero
    # after perturbing the zero-initialised layers, the output depends on t and on y
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    a = m(x[:1], t[:1], y[:1])
    assert not torch.allclose(a, m(x[:1], t[1:2], y[:1]))
    assert not torch.allclose(a, m(x[:1], t[:1], y[1:2]))


def test_bad_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        DiT()(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        DiT(patch_size=5)


def test_class_label_is_learned_within_a_short_budget():
    """A class-determined colour must reach ε̂ within 150 Adam steps (the study trains only 750): with DiT's
    N(0, 0.02²) class table the label stayed unused (swapping it changed nothing) and samples had random
    colours."""
    from jitkit.diffusion.ddpm import DDPMSchedule

    torch.manual_seed(0)
    net = DiT(hidden_size=32, depth=1, num_heads=2, num_classes=4)
    sched = DDPMSchedule(50)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])  # [4, 3]
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        y = torch.randint(0, 4, (64,), generator=g)
        x0 = colours[y][:, :, None, None].expand(-1, -1, 16, 16)  # solid images [64, 3, 16, 16]
        loss = sched.loss(net, x0, y, generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        y = torch.arange(4).repeat(64)
        x0 = colours[y][:, :, None, None].expand(-1, -1, 16, 16)
        t = torch.full((256,), 49)  # the noisiest step, where only the label tells the colour
        eps = torch.randn(x0.shape, generator=g)
        xt = sched.q_sample(x0, t, eps)
        right = (net(xt, t, y) - eps).pow(2).mean().item()
        wrong = (net(xt, t, (y + 1) % 4) - eps).pow(2).mean().item()
    assert wrong > 1.2 * right, (
        f"the DiT ignores its class label: ε-MSE {right:.4f} (right) vs {wrong:.4f} (wrong)"
    )


def test_dit_config_rejects_unknown_keys_and_coerces_strings():
    from jitkit.config import ConfigError

    cfg = DiTConfig().replace(hidden_size="32", null_class="true", class_init_std="0.5")
    assert (cfg.hidden_size, cfg.null_class, cfg.class_init_std) == (32, True, 0.5)
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    assert DiT(cfg).cfg == cfg and DiT(depth="2").cfg.depth == 2
    with pytest.raises(ConfigError, match="unknown DiTConfig key 'hidden'.*did you mean 'hidden_size'"):
        DiT(hidden=32)
    with pytest.raises(ConfigError, match="num_heads must be >= 1, found 0"):
        DiTConfig().replace(num_heads=0)
    with pytest.raises(ConfigError, match="class_init_std must be > 0"):
        DiTConfig().replace(class_init_std=0.0)


def test_initialisation_draws_in_dits_order():
    """The shared init (``init_adaln_zero``) draws its random numbers in the order DiT's own code did, so a
    seed still gives the same weights; the sequence below is DiT's initialize_weights written out."""
    from jitkit.models.layers import sincos_2d

    m = DiT(hidden_size=32, depth=2, num_heads=2, null_class=True, class_init_std=0.7)
    torch.manual_seed(3)
    m.initialize_weights()
    got = {k: v.clone() for k, v in m.state_dict().items()}

    torch.manual_seed(3)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(mod.weight)
            torch.nn.init.zeros_(mod.bias)
    m.pos_embed.data.copy_(sincos_2d(32, m.cfg.grid_size).unsqueeze(0))
    w = m.x_embedder.weight.data
    torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    torch.nn.init.zeros_(m.x_embedder.bias)
    torch.nn.init.normal_(m.y_embedder.weight, std=0.7)
    torch.nn.init.normal_(m.t_mlp[0].weight, std=0.02)
    torch.nn.init.normal_(m.t_mlp[2].weight, std=0.02)
    zero = [b.adaLN_modulation[-1] for b in m.blocks]
    for lin in zero + [m.final_layer.adaLN_modulation[-1], m.final_layer.linear]:
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    want = m.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got), [
        k for k in got if not torch.equal(got[k], want[k])
    ]
    assert want["final_layer.linear.weight"].abs().sum() == 0 and want["y_embedder.weight"].std() > 0.5
