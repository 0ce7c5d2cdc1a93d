import pytest
import torch

from jitkit.config import ConfigError
from jitkit.models.unet import UNet, UNetConfig

STUDY_DIT_PARAMS = 323_696


def _inputs(B: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, 16, 16, generator=g)
    t = torch.tensor([0, 100, 199, 50][:B])
    y = torch.tensor([0, 7, 15, 3][:B])
    return x, t, y


def test_parameter_count_is_within_5_percent_of_the_study_dit():
    n = sum(p.numel() for p in UNet().parameters())
    assert n == 320_091  # the docstring of jitkit.models.unet derives it term by term
    assert abs(n / STUDY_DIT_PARAMS - 1) < 0.05
    # a null-class row adds exactly one embedding row, as for the DiT
    assert sum(p.numel() for p in UNet(null_class=True).parameters()) == n + UNetConfig().emb_dim


def test_output_has_the_input_shape():
    x, t, y = _inputs()
    assert UNet()(x, t, y).shape == x.shape
    # also a one-level-down variant without attention
    assert UNet(channel_mults=(1, 2), attn_heads=0)(x, t, y).shape == x.shape


def test_zero_initialised_output_conv_gives_zero_output_and_still_gets_gradients():
    torch.manual_seed(0)
    m = UNet()
    x, t, y = _inputs()
    out = m(x, t, y)
    assert out.abs().max().item() == 0.0
    eps = torch.randn_like(x)
    (out - eps).pow(2).mean().backward()
    assert m.conv_out.weight.grad is not None and m.conv_out.weight.grad.abs().sum() > 0
    assert m.conv_out.bias.grad.abs().sum() > 0
    # the body gets no gradient through a zero output conv until the first step moves it
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.conv_in.parameters())


def test_class_and_time_change_the_output_once_the_output_conv_is_nonzero():
    torch.manual_seed(0)
    m = UNet()
    with torch.no_grad():
        m.conv_out.weight.normal_(0.0, 0.05)
    x, t, y = _inputs(2)
    a = m(x[:1], t[:1], y[:1])
    assert a.abs().max() > 0
    assert not torch.allclose(a, m(x[:1], t[:1], y[1:2]))  # another class
    assert not torch.allclose(a, m(x[:1], t[1:2], y[:1]))  # another step


def test_bad_input_and_config_are_explained():
    m = UNet()
    z = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        m(torch.randn(2, 3, 8, 8), z, z)
    with pytest.raises(ValueError, match="t and y"):
        m(torch.randn(2, 3, 16, 16), z[:1], z)
    with pytest.raises(ConfigError, match="divisible by groups"):
        UNet(base_channels=20)
    with pytest.raises(ConfigError, match="divisible by 2"):
        UNet(img_size=12, channel_mults=(1, 1, 2, 2))


def test_trains_in_the_studys_ddpm():
    """A few AdamW steps of the DDPM loss on a tiny U-Net lower the loss from its zero-output start (1.0)."""
    from jitkit.diffusion.ddpm import DDPMSchedule

    torch.manual_seed(0)
    net = UNet(base_channels=8, channel_mults=(1, 2), emb_dim=16, attn_heads=2, num_classes=4)
    sched = DDPMSchedule(50)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])  # [4, 3]
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        y = torch.randint(0, 4, (32,), generator=g)
        x0 = colours[y][:, :, None, None].expand(-1, -1, 16, 16)  # solid images [32, 3, 16, 16]
        loss = sched.loss(net, x0, y, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, abs=0.15)  # ε̂ = 0 at the start: the loss is E‖ε‖²
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]
