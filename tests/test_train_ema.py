"""EMA: the two-decay recurrence, frozen parameters, state round trip and the warm-up decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jitkit.train.ema import EMA


def test_ema_two_decays_follow_the_recurrence():
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    m.register_parameter("frozen", nn.Parameter(torch.ones(2), requires_grad=False))
    ema = EMA(m, (0.9, 0.5))
    ref = {d: {n: p.detach().clone().double() for n, p in m.named_parameters()} for d in (0.9, 0.5)}
    for _ in range(5):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        ema.update(m)
        for d in (0.9, 0.5):
            for n, p in m.named_parameters():
                if p.requires_grad:
                    ref[d][n] = d * ref[d][n] + (1 - d) * p.detach().double()
                else:
                    ref[d][n] = p.detach().double()
    for which, d in ((1, 0.9), (2, 0.5)):
        got = ema.averaged(which)
        for n in ref[d]:
            torch.testing.assert_close(got[n].double(), ref[d][n], rtol=1e-6, atol=1e-6)
    # decay 0.5 has moved further toward the current weights than decay 0.9
    w = m.weight.detach()
    assert (ema.averaged(2)["weight"] - w).abs().sum() < (ema.averaged(1)["weight"] - w).abs().sum()


def test_ema_copy_to_and_state_round_trip():
    m = nn.Linear(4, 4)
    ema = EMA(m, (0.99, 0.9))
    with torch.no_grad():
        m.weight.mul_(3)
    ema.update(m)
    other = nn.Linear(4, 4)
    ema.copy_to(other, 2)
    assert torch.equal(other.weight, ema.averaged(2)["weight"])
    e2 = EMA(nn.Linear(4, 4), (0.99, 0.9))
    e2.load_state_dict(ema.state_dict())
    assert torch.equal(e2.averaged(1)["weight"], ema.averaged(1)["weight"])
    assert e2.num_updates == 1
    sd = ema.averaged_state_dict(m, 1)
    assert set(sd) == set(m.state_dict()) and torch.equal(sd["bias"], ema.averaged(1)["bias"])
    with pytest.raises(ValueError, match="decays must lie in"):
        EMA(m, (1.0, 0.5))


def test_ema_warmup_decay():
    m = nn.Linear(2, 2)
    ema = EMA(m, (0.999, 0.5), warmup=True)
    assert ema.current_decays() == pytest.approx((0.1, 0.1))  # (1 + 0)/(10 + 0)
    w0 = ema.averaged(1)["weight"].clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.averaged(1)["weight"], 0.1 * w0 + 0.9 * m.weight.detach())
    ema.num_updates = 10_000
    assert ema.current_decays() == pytest.approx((0.999, 0.5))
    assert EMA(m, (0.999, 0.5)).current_decays() == (0.999, 0.5)
