"""The LR scaling rule and the per-step schedule (warm-up, constant, half-cosine)."""

from __future__ import annotations

import pytest
from torch import nn

from jitkit.train.optim import make_optimizer
from jitkit.train.schedule import lr_at, scaled_lr, set_lr


def test_lr_scaling_rule_and_schedule_values():
    assert scaled_lr(5e-5, 1024) == pytest.approx(2e-4)
    assert scaled_lr(5e-4, 128) == pytest.approx(2.5e-4)
    kw = dict(warmup_epochs=5, epochs=25)
    assert lr_at(0.0, 1.0, **kw) == 0.0
    assert lr_at(2.5, 1.0, **kw) == pytest.approx(0.5)  # linear warm-up, fractional epoch
    assert lr_at(5.0, 1.0, **kw) == 1.0
    assert lr_at(20.0, 1.0, **kw) == 1.0  # constant
    cos = dict(kw, schedule="cosine", min_lr=0.1)
    assert lr_at(5.0, 1.0, **cos) == pytest.approx(1.0)
    assert lr_at(15.0, 1.0, **cos) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_at(25.0, 1.0, **cos) == pytest.approx(0.1)
    assert lr_at(30.0, 1.0, **cos) == pytest.approx(0.1)
    assert lr_at(3.0, 2.0, warmup_epochs=0, epochs=10) == 2.0
    with pytest.raises(ValueError, match="constant' or 'cosine"):
        lr_at(6.0, 1.0, warmup_epochs=5, epochs=10, schedule="step")


def test_set_lr_sets_every_group_scaled_by_its_lr_scale():
    opt = make_optimizer(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), lr=1.0, weight_decay=0.05)
    opt.param_groups[1]["lr_scale"] = 0.5
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]
