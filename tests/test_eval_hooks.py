"""jitkit.eval.hooks: the training callbacks (shapes metric, FID schedule) and what they sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jitkit.config import RunConfig, SamplerConfig, resolve_run_config
from jitkit.data.shapes import class_names
from jitkit.diffusion import generate
from jitkit.diffusion.generate import balanced_labels, generate_images
from jitkit.eval import hooks
from jitkit.eval.shapes_metric import shapes_metrics
from jitkit.images import save_grid

SCFG = SamplerConfig(method="euler", steps=2)


@pytest.fixture(scope="module")
def shapes_den(tiny):
    """A tiny random Denoiser on the shapes data's 16 px images and 16 classes."""
    return tiny.denoiser(tiny.model_config(img_size=16, num_classes=16))


def _run_cfg(**train) -> RunConfig:
    return resolve_run_config(
        {"model": {"name": "JiT-T/4", "img_size": 16, "num_classes": 16}, "train": train}
    )


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_shapes_hook_reports_the_metric_of_the_images_generate_makes(shapes_den, tmp_path):
    cfg = _run_cfg()
    cbs = hooks.make_eval_callbacks(cfg, shapes_per_class=1)
    assert len(cbs) == 1 and isinstance(cbs[0], hooks.ShapesEval)
    cb = hooks.ShapesEval(per_class=1, seed=3, sampler=SCFG, progress=False)
    assert cb("epoch_end", {"denoiser": shapes_den}) is None  # only at the end
    info = {"denoiser": shapes_den, "step": 7, "epoch": 1, "run_dir": str(tmp_path), "config": cfg}
    rec = cb("end", info)
    labels = balanced_labels(16, per_class=1)
    images = generate_images(shapes_den, labels, SCFG, seed=3)
    expected = shapes_metrics(images, labels)
    assert rec["accuracy"] == expected["accuracy"] and rec["mean_iou"] == pytest.approx(expected["mean_iou"])
    assert rec["event"] == "end" and rec["step"] == 7 and rec["epoch"] == 1 and cb.last == rec
    logged = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 7 and logged[-1]["metric"] == "shapes"
    # the grid holds exactly the images generate_images makes for the same seed (what jitkit sample makes)
    grid = tmp_path / "samples" / "eval-shapes-step-000007.png"
    assert rec["grid"] == str(grid)
    save_grid(images, labels, tmp_path / "expected.png", class_names())
    assert np.array_equal(_pixels(grid), _pixels(tmp_path / "expected.png"))


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_hooks_sample_with_the_run_sampler_and_precision(shapes_den, monkeypatch, precision):
    seen = []

    def spy(*args, **kw):
        seen.append((args[2], kw["precision"], kw["seed"]))
        return generate_images(*args, **kw)

    monkeypatch.setattr(generate, "generate_images", spy)
    cfg = _run_cfg(precision=precision).override({"sampler.steps": 1})
    rec = hooks.ShapesEval(per_class=1, seed=5, progress=False, save_grid=False)(
        "end", {"denoiser": shapes_den, "config": cfg}
    )
    assert seen == [(cfg.sampler, precision, 5)] and rec["metric"] == "shapes"
    # without a run config: the default sampler in fp32
    seen.clear()
    hooks.ShapesEval(per_class=1, progress=False)("end", {"denoiser": shapes_den})
    assert seen == [(SamplerConfig(), "fp32", 0)]


def test_only_rank_zero_evaluates(shapes_den, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert hooks.ShapesEval(per_class=1, progress=False)("end", {"denoiser": shapes_den}) is None


def test_fid_hook_needs_reference_stats():
    cfg = RunConfig().override({"train.eval_every_epochs": 5, "data.data": "folder"})
    with pytest.raises(ValueError, match="needs reference statistics"):
        hooks.make_eval_callbacks(cfg)
    assert hooks.make_eval_callbacks(RunConfig().override({"data.data": "folder"})) == []
    assert hooks.make_eval_callbacks(_run_cfg(eval_at_end=False)) == []


def test_fid_schedule():
    due = [e for e in range(1, 11) if hooks.fid_due("epoch_end", e, every=4)]
    assert due == [4, 8]
    assert hooks.fid_due("end", 3, every=4) and not hooks.fid_due("end", 3, every=4, at_end=False)
    assert not any(hooks.fid_due("epoch_end", e, every=0) for e in range(1, 5))
    assert not hooks.fid_due("step", 4, every=4)
