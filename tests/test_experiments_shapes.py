import json

import pytest
import torch

from jitkit.cli import main
from jitkit.experiments.shapes_study import DiTDDPM, JiTFlow, ShapesStudyConfig, fit, quick_config


def test_study_models_match_the_spec():
    cfg = ShapesStudyConfig()
    dit, jit = DiTDDPM(cfg), JiTFlow(cfg)
    assert sum(p.numel() for p in dit.net.parameters()) == 323_696
    m = jit.net.cfg
    assert (m.hidden_size, m.depth, m.num_heads, m.patch_size, m.img_size) == (64, 4, 4, 4, 16)
    assert jit.denoiser.cfg.pred == "x" and jit.denoiser.cfg.loss == "v"
    assert jit.sampler.method == "heun"
    assert dit.schedule.T == 200 and dit.nfe == 200
    assert jit.nfe == 2 * cfg.heun_steps - 1


def test_fit_decreases_the_loss_on_a_tiny_set():
    cfg = quick_config()
    torch.manual_seed(0)
    model = DiTDDPM(cfg)
    imgs = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    imgs[:, :, :8] = 0  # structure to learn
    labels = torch.arange(32) % 16
    res, _ = fit(
        model,
        imgs,
        labels,
        epochs=6,
        batch_size=16,
        lr=3e-3,
        weight_decay=0.0,
        grad_clip=1.0,
        seed=0,
        progress=False,
    )
    assert res.steps == 12
    assert res.epoch_losses[-1] < res.epoch_losses[0]
    with pytest.raises(ValueError, match="batch_size"):
        fit(
            model,
            imgs,
            labels,
            epochs=1,
            batch_size=64,
            lr=1e-3,
            weight_decay=0.0,
            grad_clip=0.0,
            seed=0,
            progress=False,
        )


def test_quick_shapes_cli_writes_every_file(tmp_path):
    out = tmp_path / "sh"
    assert (
        main(["experiment", "shapes", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    )
    for f in (
        "grid_dit.png",
        "grid_jit.png",
        "grid_jit_long.png",
        "trajectory.png",
        "losses.png",
        "report.md",
        "results.json",
    ):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    cfg = quick_config()
    assert set(res["runs"]) == {"dit", "jit", "jit_long"}
    for k in ("dit", "jit"):
        r = res["runs"][k]
        assert len(r["epoch_losses"]) == cfg.epochs
        assert r["metrics"]["n"] == 16 * cfg.samples_per_class
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
    assert res["runs"]["dit"]["nfe"] == cfg.ddpm_T
    assert res["runs"]["jit_long"]["epochs"] <= cfg.long_max_epochs
    report = (out / "report.md").read_text()
    for f in ("grid_dit.png", "grid_jit.png", "trajectory.png"):
        assert f in report
