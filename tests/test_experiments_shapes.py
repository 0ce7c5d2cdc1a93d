import json
import math

import pytest
import torch

from jitkit.cli import main
from jitkit.config import ConfigError
from jitkit.experiments.shapes_config import ShapesStudyConfig, quick_config
from jitkit.experiments.shapes_study import DiTDDPM, DiTFlow, JiTDDPM, JiTFlow, UNetDDPM, _score, fit


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


def test_study_unet_shares_the_dit_ddpm_and_matches_its_size():
    """(d): a U-Net within 5 % of the DiT's 323,696 parameters in the DiT's own DDPM (same T, β, sampler)."""
    from jitkit.models.unet import UNet

    cfg = ShapesStudyConfig()
    assert cfg.runs == ("dit", "jit", "jit_long", "unet", "dit_xpred", "jit_eps")
    torch.manual_seed(cfg.seed)
    dit = DiTDDPM(cfg)
    unet = UNetDDPM(cfg)
    assert isinstance(unet.net, UNet) and sum(p.numel() for p in unet.net.parameters()) == 320_091
    assert abs(sum(p.numel() for p in unet.net.parameters()) / 323_696 - 1) < 0.05
    assert unet.schedule.T == dit.schedule.T == 200 and unet.nfe == 200
    assert torch.equal(unet.schedule.betas, dit.schedule.betas)
    assert unet.sampler_name == dit.sampler_name == "DDPM ancestral"
    # passing the network in leaves the DiT path untouched: the same seed builds the same DiT weights
    torch.manual_seed(cfg.seed)
    again = DiTDDPM(cfg)
    assert all(torch.equal(a, b) for a, b in zip(dit.state_dict().values(), again.state_dict().values()))


def test_the_two_by_two_swaps_only_the_objective_or_only_the_network():
    """(e) = (a)'s DiT in (b)'s objective and sampler; (f) = (b)'s JiT in (a)'s DDPM; outputs zero at init."""
    from jitkit.models.dit import DiT
    from jitkit.models.jit import JiT

    cfg = ShapesStudyConfig()
    dit, jit, e, f = DiTDDPM(cfg), JiTFlow(cfg), DiTFlow(cfg), JiTDDPM(cfg)
    assert isinstance(e.net, DiT) and isinstance(f.net, JiT)
    # the DiT gains only the null-class row label drop needs; the JiT is (b)'s network
    assert sum(p.numel() for p in e.net.parameters()) == 323_696 + cfg.dit_hidden
    assert sum(p.numel() for p in f.net.parameters()) == sum(p.numel() for p in jit.net.parameters())
    assert e.denoiser.cfg == jit.denoiser.cfg and e.sampler == jit.sampler and e.nfe == jit.nfe
    assert torch.equal(f.schedule.betas, dit.schedule.betas) and f.nfe == dit.nfe == 200
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 5, 15])
    for net, t in ((e.net, torch.rand(3)), (f.net, torch.tensor([0, 100, 199]))):
        out = net(x, t, y)
        assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero-initialised final layers
    assert torch.isfinite(e.loss(x, y)) and torch.isfinite(f.loss(x, y))


def test_report_verdicts_follow_the_numbers():
    from jitkit.experiments.shapes_report import claims, per_shape_accuracy

    def met(acc, col, shape, iou, cross=0.0):
        per = {
            f"{c}_{s}": (cross if s == "cross" else shape)
            for c in ("red", "blue")
            for s in ("circle", "square", "triangle", "cross")
        }
        return {
            "accuracy": acc,
            "color_accuracy": col,
            "shape_accuracy": shape,
            "mean_iou": iou,
            "per_class": per,
        }

    losses = [0.92] + [0.2] * 28 + [0.13]
    runs = {
        "dit": {"metrics": met(0.25, 0.99, 0.25, 0.54), "epoch_losses": losses, "params": 323_696},
        "unet": {"metrics": met(0.34, 1.0, 0.34, 0.80), "epoch_losses": losses, "params": 320_091},
        "jit": {"metrics": met(0.40, 1.0, 0.40, 0.75), "epoch_losses": losses, "params": 337_344},
        "dit_xpred": {"metrics": met(0.30, 1.0, 0.30, 0.60), "epoch_losses": losses, "params": 323_760},
        "jit_eps": {"metrics": met(0.60, 1.0, 0.60, 0.70), "epoch_losses": losses, "params": 337_344},
    }
    res = {"runs": runs, "published_dit": {"loss_epoch1": 0.9147, "loss_epoch30": 0.1228}}
    text = "\n".join(claims(res))
    assert (
        'right": **held**' in text
        and 'blurry shapes" (recognisable shapes, shape accuracy ≥ 0.5): **did not' in text
    )
    assert 'sharper samples": **held**' in text and "The larger share: **the architecture**" in text
    assert (
        'hardest" (in the runs that draw shapes, shape accuracy 0.3–0.95): **held**' in text
        and "loss curve 0.9147 → 0.1228: **held**" in text
    )
    assert per_shape_accuracy(runs["dit"]["metrics"]) == {
        "circle": 0.25,
        "square": 0.25,
        "triangle": 0.25,
        "cross": 0.0,
    }
    runs["unet"]["metrics"] = met(0.2, 1.0, 0.2, 0.5, cross=0.5)
    runs["jit"]["metrics"] = met(0.9, 1.0, 0.9, 0.9)
    runs["dit_xpred"]["metrics"] = met(0.7, 1.0, 0.7, 0.8)
    runs["jit_eps"]["metrics"] = met(0.3, 1.0, 0.3, 0.6)
    text = "\n".join(claims(res))
    assert 'sharper samples": **did not hold**' in text and "The larger share: **the objective**" in text


def test_fit_decreases_the_loss_on_a_tiny_set():
    cfg = quick_config()
    torch.manual_seed(0)
    model = DiTDDPM(cfg)
    imgs = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    imgs[:, :, :8] = 0  # structure to learn
    labels = torch.arange(32) % 16
    recipe = cfg.replace(epochs=6, batch_size=16, lr=3e-3, weight_decay=0.0, grad_clip=1.0, seed=0)
    res, opt = fit(model, imgs, labels, recipe, progress=False)
    assert res.steps == 12
    assert res.epoch_losses[-1] < res.epoch_losses[0]
    # the study's AdamW, left at the cosine's value for the last step (11 of 12)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["lr"] == pytest.approx(
        3e-3 * 0.5 * (1 + math.cos(math.pi * 11 / 12)), rel=1e-12
    )
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, imgs, labels, cfg.replace(epochs=1, batch_size=64), progress=False)


@pytest.mark.parametrize("steps_per_epoch,epochs", [(25, 30), (2, 2), (7, 3), (1, 1)])
def test_library_cosine_equals_the_studys_per_step_cosine(steps_per_epoch, epochs):
    """``fit`` sets ``lr_at(step / steps_per_epoch, …)`` (cosine, no warm-up): the study's
    lr·½(1 + cos(π·step/total_steps))."""
    from jitkit.train.schedule import lr_at

    lr, total = 5e-4, steps_per_epoch * epochs
    for step in range(total):
        study = lr * 0.5 * (1 + math.cos(math.pi * step / total))
        got = lr_at(step / steps_per_epoch, lr, warmup_epochs=0, epochs=epochs, schedule="cosine")
        assert got == pytest.approx(study, rel=1e-12, abs=1e-20), step


def test_jit_samples_equal_the_sampler_driven_by_hand():
    """JiTFlow samples through ``sample_denoiser``: the same images and trajectory as ``sample`` given the
    Denoiser's v-prediction, null class and t_eps by hand (the study's code before it used the library)."""
    from jitkit.diffusion.sampling import Trajectory, sample

    cfg = quick_config()
    torch.manual_seed(0)
    flow = JiTFlow(cfg)
    with torch.no_grad():
        for p in flow.net.parameters():  # the zero-initialised output layer would make every x̂ = 0
            p.normal_(0.0, 0.05)
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 5, 15])
    frames: list = []
    got = flow.generate(noise, y, seed=0, frames=frames)
    traj = Trajectory()
    with torch.no_grad():
        want = sample(
            lambda z, t, yy: flow.denoiser.predict(z, t, yy, kind="v"),
            noise,
            y,
            flow.sampler,
            flow.denoiser.null_class,
            t_eps=flow.denoiser.cfg.t_eps,
            trajectory=traj,
        )
    assert torch.equal(got, want)
    assert len(frames) == len(traj.x) + 1
    assert all(torch.equal(f[1], z) and torch.equal(f[2], x) for f, z, x in zip(frames, traj.z, traj.x))


def test_study_config_rejects_unknown_keys_and_coerces_strings():
    cfg = ShapesStudyConfig().replace(epochs="7", runs="dit,jit", hflip="false", lr="1e-3")
    assert (cfg.epochs, cfg.runs, cfg.hflip, cfg.lr) == (7, ("dit", "jit"), False, 1e-3)
    assert ShapesStudyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown ShapesStudyConfig key 'epoch'.*did you mean 'epochs'"):
        ShapesStudyConfig().replace(epoch=3)
    with pytest.raises(ConfigError, match="ddpm_T must be >= 1, found 0"):
        quick_config(ddpm_T=0)
    with pytest.raises(ConfigError, match="runs must be a non-empty subset"):
        quick_config(runs="dit,sd")
    with pytest.raises(ConfigError, match="long_check_every must be >= 1, found 0"):
        quick_config(long_check_every=0)
    quick_config(runs="dit", long_check_every=0)  # (c)'s knobs only matter when (c) runs


def test_quick_shapes_cli_writes_every_file(tmp_path):
    out = tmp_path / "sh"
    assert (
        main(["experiment", "shapes", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    )
    for f in (
        "grid_dit.png",
        "grid_jit.png",
        "grid_jit_long.png",
        "grid_unet.png",
        "grid_dit_xpred.png",
        "grid_jit_eps.png",
        "trajectory.png",
        "grids.png",
        "losses.png",
        "report.md",
        "results.json",
    ):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    cfg = quick_config()
    assert set(res["runs"]) == {"dit", "jit", "jit_long", "unet", "dit_xpred", "jit_eps"}
    ctors = {"dit": DiTDDPM, "jit": JiTFlow, "unet": UNetDDPM, "dit_xpred": DiTFlow, "jit_eps": JiTDDPM}
    keys = ("accuracy", "color_accuracy", "mean_iou")
    gain = {}
    for k, ctor in ctors.items():
        # the same model untrained (same seed, same scoring): a trained run must score differently
        torch.manual_seed(cfg.seed)
        untrained, *_ = _score(ctor(cfg), cfg, cfg.seed + 99)
        trained = res["runs"][k]["metrics"]
        assert [trained[m] for m in keys] != [untrained[m] for m in keys], k
        assert res["runs"][k]["epoch_losses"][-1] < 0.8 * res["runs"][k]["epoch_losses"][0], k
        gain[k] = trained["color_accuracy"] - untrained["color_accuracy"]
    # the flow runs learn the colours within the quick budget (untrained: 0.25)
    assert (gain["jit"] + gain["dit_xpred"]) / 2 >= 0.2, gain
    for k in ctors:
        r = res["runs"][k]
        assert len(r["epoch_losses"]) == cfg.epochs
        assert all(math.isfinite(v) for v in r["epoch_losses"])
        assert r["metrics"]["n"] == 16 * cfg.samples_per_class
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
        assert math.isfinite(r["metrics"]["mean_iou"]) and math.isfinite(r["metrics"]["color_accuracy"])
    assert res["runs"]["dit"]["nfe"] == res["runs"]["unet"]["nfe"] == cfg.ddpm_T
    assert res["runs"]["unet"]["sampler"] == "DDPM ancestral"
    assert res["runs"]["jit_long"]["epochs"] <= cfg.long_max_epochs
    # every run's scored samples as a standard sample folder that jitkit eval scores to the same numbers
    for k, r in res["runs"].items():
        folder = out / r["samples"]
        assert r["samples"] == f"samples/{k}" and (folder / "labels.csv").is_file()
        assert main(["eval", str(folder), "--metric", "shapes", "--json", str(tmp_path / f"{k}.json")]) == 0
        again = json.loads((tmp_path / f"{k}.json").read_text())["shapes"]
        assert again["n"] == r["metrics"]["n"] == 16 * cfg.samples_per_class
        assert again["accuracy"] == r["metrics"]["accuracy"] and again["mean_iou"] == r["metrics"]["mean_iou"]
    report = (out / "report.md").read_text()
    for f in ("grid_dit.png", "grid_jit.png", "grid_unet.png", "trajectory.png"):
        assert f in report
    assert "(d) U-Net ε-pred DDPM" in report and "(e) DiT x-pred v-loss" in report
    assert "| DiT (the study's) | (a) " in report and "## The study's claims here" in report
    assert "U-Net of the same parameter count would produce sharper samples" in report
    header = next(line for line in report.splitlines() if line.startswith("| | (a)"))
    assert (
        header.index("(a)")
        < header.index("(b)")
        < header.index("(c)")
        < header.index("(d)")
        < header.index("(f)")
    )


def test_quick_cli_runs_only_the_unet(tmp_path):
    out = tmp_path / "u"
    args = ["experiment", "shapes", "--quick", "--runs", "unet", "--out", str(out), "--no-progress"]
    assert main([*args, "--threads", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["runs"]) == ["unet"]
    assert (out / "grid_unet.png").is_file() and not (out / "grid_dit.png").exists()


def test_mosaic_puts_each_class_on_its_own_row():
    import numpy as np

    from jitkit.experiments.shapes_report import mosaic

    imgs = np.zeros((6, 3, 2, 2), dtype=np.uint8)
    for i in range(6):
        imgs[i] = 10 * (i + 1)
    labels = np.array([1, 0, 1, 0, 1, 0])
    m = mosaic(imgs, labels, per_class=2, pad=1)
    assert m.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    # row 0 = class 0 (images 1, 3), row 1 = class 1 (images 0, 2); the third of each class is left out
    assert m[1, 1, 0] == 20 and m[1, 4, 0] == 40 and m[4, 1, 0] == 10 and m[4, 4, 0] == 30
    assert m[0].max() == 0 and m[:, 0].max() == 0  # the gaps stay black
