import math

import pytest
import torch

from jitkit.experiments.dit_probe import (
    attention_entropy,
    attention_maps,
    format_table,
    run_probe,
    variants,
)
from jitkit.experiments.shapes_config import quick_config


def test_entropy_of_hand_made_attention_maps():
    N = 16
    uniform = torch.full((2, 4, N, N), 1.0 / N)  # [B, H, N, N]
    assert attention_entropy(uniform) == pytest.approx(1.0, abs=1e-9)
    one_hot = torch.eye(N).expand(2, 4, N, N)
    assert attention_entropy(one_hot) == pytest.approx(0.0, abs=1e-12)
    # half the keys, evenly: log(N/2)/log N
    half = torch.zeros(1, 1, N, N)
    half[..., : N // 2] = 2.0 / N
    assert attention_entropy(half) == pytest.approx(math.log(N / 2) / math.log(N), abs=1e-9)


def test_attention_maps_are_row_stochastic_per_block():
    from jitkit.models.dit import DiT

    torch.manual_seed(0)
    net = DiT(hidden_size=32, depth=2, num_heads=2, num_classes=4)
    x = torch.randn(3, 3, 16, 16)
    maps = attention_maps(net, x, torch.tensor([0, 5, 9]), torch.tensor([0, 1, 3]))
    assert len(maps) == 2 and maps[0].shape == (3, 2, 16, 16)
    assert torch.allclose(maps[1].sum(-1), torch.ones(3, 2, 16))


def test_tiny_probe_writes_a_table_of_finite_numbers(tmp_path):
    torch.set_num_threads(1)
    cfg = quick_config(epochs=1, per_class=4, samples_per_class=1)
    rows = run_probe(cfg, tmp_path, ["baseline", "pos_zero"], log=None)
    names = [r["variant"] for r in rows]
    assert names[0] == "baseline" and "pos_zero" in names and len(rows) == 6  # + the baseline's 4 extras
    for r in rows:
        for k in (
            "loss_first",
            "loss_last",
            "accuracy",
            "shape_accuracy",
            "color_accuracy",
            "mean_iou",
            "cross_patch",
        ):
            assert math.isfinite(r[k]), (r["variant"], k, r[k])
        ents = [e for per_layer in r["entropy"].values() for e in per_layer]
        assert ents and all(0.0 <= e <= 1.0 for e in ents)
    table = (tmp_path / "results.md").read_text()
    assert table == format_table(rows) and "| pos_zero |" in table
    assert (tmp_path / "results.json").exists() and (tmp_path / "grid_baseline.png").exists()


def test_the_objective_and_data_range_variants_change_what_is_trained(tmp_path):
    torch.set_num_threads(1)
    cfg = quick_config(epochs=1, per_class=4, samples_per_class=1)
    rows = {r["variant"]: r for r in run_probe(cfg, tmp_path, ["baseline", "xpred", "data_01"], log=None)}
    for name in ("xpred", "data_01"):
        r = rows[name]
        assert all(math.isfinite(r[k]) for k in ("loss_first", "accuracy", "mean_iou", "cross_patch")), name
    # the v-loss of an untrained x-predictor starts near E|x − e|² ≈ 1.4 and the ε-loss near 1: another objective
    assert rows["xpred"]["loss_first"] > rows["baseline"]["loss_first"] + 0.2
    assert rows["data_01"]["loss_first"] != rows["baseline"]["loss_first"]
    assert (tmp_path / "grid_xpred.png").exists()


def test_every_variant_names_what_it_changes():
    vs = variants(quick_config())
    assert "baseline" in vs and all(v.what for v in vs.values())


def test_combined_variants_apply_every_change_in_order():
    import contextlib

    from jitkit.experiments.dit_probe import Variant, combine

    seen: list[str] = []

    @contextlib.contextmanager
    def entered(tag):
        seen.append(f"enter {tag}")
        yield
        seen.append(f"exit {tag}")

    a = Variant(
        "a", "A", cfg={"lr": 1e-3}, setup=lambda m: seen.append("setup a"), patch=lambda: entered("a")
    )
    b = Variant("b", "B", cfg={"seed": 3}, setup=lambda m: seen.append("setup b"), patch=lambda: entered("b"))
    c = combine([a, b])
    assert c.name == "a+b" and c.cfg == {"lr": 1e-3, "seed": 3} and c.objective == "ddpm"
    with c.patch():
        c.setup(None)
    assert seen == ["enter a", "enter b", "setup a", "setup b", "exit b", "exit a"]
    x = Variant("x", "X", objective="flow")
    assert combine([a, x]).objective == "flow"
    with pytest.raises(ValueError, match="unknown probe variants \\['nope'\\]"):
        run_probe(
            quick_config(epochs=1, per_class=4), "/nonexistent-never-created", ["data_01+nope"], log=None
        )
