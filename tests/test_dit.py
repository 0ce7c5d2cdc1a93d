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
