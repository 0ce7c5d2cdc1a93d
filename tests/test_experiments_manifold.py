import json

import numpy as np
import pytest
import torch

from jitkit.cli import main
from jitkit.config import ConfigError
from jitkit.experiments.manifold import (
    ManifoldConfig,
    StackedMLP,
    euler_sample,
    quick_config,
    replot_manifold,
    v_loss,
)


def _batch(D=5, B=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    e = torch.randn(B, D, generator=g)
    t = torch.rand(B, generator=g).clamp(0.01, 0.99)
    z = t[:, None] * x + (1 - t[:, None]) * e
    out = torch.randn(B, D, generator=g)
    return x, e, t, z, out


@pytest.mark.parametrize("pred", ["x", "eps", "v"])
def test_v_loss_matches_the_notebook_formulas(pred):
    x, e, t, z, out = _batch()
    tb = t[:, None]
    v = x - e
    if pred == "x":
        v_hat = (out - z) / (1 - tb)
    elif pred == "eps":
        v_hat = (z - out) / tb
    else:
        v_hat = out
    expected = ((v_hat - v) ** 2).mean()
    got = v_loss(out, x, e, z, t, pred, t_eps=1e-3)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # and the loss vanishes at the truth of each kind
    truth = {"x": x, "eps": e, "v": v}[pred]
    assert v_loss(truth, x, e, z, t, pred, t_eps=1e-3).item() < 1e-8


def test_t_eps_that_would_clamp_is_rejected():
    with pytest.raises(ValueError, match="t_eps"):
        ManifoldConfig(t_eps=0.05).validate()
    with pytest.raises(ValueError, match="preds"):
        ManifoldConfig(preds=("x", "score")).validate()


def test_manifold_config_rejects_unknown_keys_and_coerces_strings():
    cfg = ManifoldConfig().replace(dims="2, 8,16", preds="x,v", epochs="5", noise="0.25")
    assert (cfg.dims, cfg.preds, cfg.epochs, cfg.noise) == ((2, 8, 16), ("x", "v"), 5, 0.25)
    assert cfg.to_dict()["dims"] == [2, 8, 16]
    assert ManifoldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown ManifoldConfig key 'dim'.*did you mean 'dims'"):
        ManifoldConfig.from_dict({"dim": [2]})
    with pytest.raises(ConfigError, match="n_heldout must be >= 1, found 0"):
        quick_config(n_heldout=0)
    with pytest.raises(ConfigError, match="noise must be >= 0, found -0.1"):
        quick_config(noise=-0.1)
    with pytest.raises(ConfigError, match="dims: expected an integer, found 'a'"):
        quick_config(dims="2,a")


def test_stacked_models_are_independent():
    torch.manual_seed(0)
    net = StackedMLP(3, 4, width=8, hidden_layers=2)
    z, t = torch.randn(3, 5, 4), torch.rand(3, 5)
    out = net(z, t)
    out[1].sum().backward()
    grads = [w.grad for w in net.weights]
    assert all(g[0].abs().sum() == 0 and g[2].abs().sum() == 0 and g[1].abs().sum() > 0 for g in grads)


def test_euler_sampler_with_an_exact_x_predictor_lands_on_the_point():
    # a "network" that always predicts x = c: the flow z' = (c − z)/(1 − t) reaches z(t) = c + (1−t)/(1−t0)·(z0 − c)
    D, c = 3, torch.tensor([0.3, -0.2, 0.5])
    cfg = ManifoldConfig(dims=(D,), preds=("x",), sample_steps=100)

    class Const(torch.nn.Module):
        def forward(self, z, t):
            return c.expand_as(z)

    z0 = torch.randn(10, D, generator=torch.Generator().manual_seed(0))
    z = euler_sample(Const(), ("x",), z0, cfg)[0]
    expected = c + (1 - cfg.t_max) / (1 - cfg.t_min) * (z0 - c)
    assert torch.allclose(z, expected, atol=1e-4)


def test_quick_manifold_cli_writes_every_file(tmp_path):
    out = tmp_path / "mf"
    assert (
        main(["experiment", "manifold", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    )
    for f in ("manifold.png", "losses.png", "samples.npz", "results.json", "report.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    cfg = quick_config()
    with np.load(out / "samples.npz") as z:
        keys = set(z.files)
        assert keys == {f"D{D}_{p}" for D in cfg.dims for p in cfg.preds} | {"data"}
        assert z["data"].shape == (cfg.n, 2)
        assert z[f"D{cfg.dims[-1]}_x"].shape == (cfg.n_samples, 2)
    res = json.loads((out / "results.json").read_text())
    for D in cfg.dims:
        for p in cfg.preds:
            m = res["metrics"][f"D{D}_{p}"]
            assert np.isfinite(m["mean_nn_dist"]) and m["off_manifold_energy"] >= 0
            assert len(res["loss_history"][f"D{D}_{p}"]) == cfg.epochs
    report = (out / "report.md").read_text()
    assert "manifold.png" in report and "| 16 |" in report
    (out / "manifold.png").unlink()
    assert replot_manifold(out) == out / "manifold.png" and (out / "manifold.png").stat().st_size > 0


def test_bad_cli_input_is_explained(tmp_path, capsys):
    rc = main(["experiment", "manifold", "--quick", "--out", str(tmp_path), "--dims", "1,4"])
    assert rc == 2
    assert "--dims must be ambient dimensions >= 2, found [1, 4]" in capsys.readouterr().err
    # a field under another flag name is reported by its flag
    assert main(["experiment", "manifold", "--quick", "--out", str(tmp_path), "--samples", "0"]) == 2
    assert "--samples must be >= 1, found 0" in capsys.readouterr().err
    assert (
        main(["experiment", "shapes", "--quick", "--out", str(tmp_path), "--runs", "jit_long", "--no-long"])
        == 2
    )
    assert "--runs must be a non-empty subset" in capsys.readouterr().err
