"""jitkit.eval.hooks: the training callbacks (shapes metric, FID with an injected feature extractor, the FID
schedule), what they sample, and how they put the shares of several ranks together (simulated in one process
here; tests/test_eval_hooks_multiprocess.py runs real gloo ranks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jitkit.config import RunConfig, SamplerConfig, resolve_run_config
from jitkit.data.shapes import class_names
from jitkit.diffusion import generate
from jitkit.diffusion.generate import balanced_labels, generate_images
from jitkit.eval import hooks
from jitkit.eval.fid import feature_stats, save_stats
from jitkit.eval.fidelity import extract_features, image_metrics
from jitkit.eval.shapes_metric import shapes_metrics
from jitkit.images import save_grid

SCFG = SamplerConfig(method="euler", steps=2)


@pytest.fixture(scope="module")
def shapes_den(tiny):
    """A tiny random Denoiser on the shapes data's 16 px images and 16 classes."""
    return tiny.denoiser(tiny.model_config(img_size=16, num_classes=16))


class StandInFeatures(torch.nn.Module):
    """A small deterministic stand-in for Inception (no torch-fidelity, no weights): a random conv, ReLU and
    global average pooling → ``features`` "pool" features, and a random linear map of them → ``classes``
    logits (scaled up, so that the Inception Score of different images is well above 1). The weights come from their own generator, so every process builds the same network."""

    def __init__(self, seed: int = 0, features: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, features, 3, stride=2)
        self.head = torch.nn.Linear(features, classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 127.5 - 1.0  # uint8 [B, 3, S, S] → [-1, 1]
        f = torch.relu(self.conv(x)).mean(dim=(2, 3))  # [B, F]
        return {"2048": f, "logits_unbiased": 20.0 * self.head(f)}


def stand_in_ref_stats(path, n: int = 64, size: int = 8):
    """Reference statistics of random uint8 images through :class:`StandInFeatures`."""
    g = torch.Generator().manual_seed(99)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    mu, sigma = feature_stats(extract_features([images], StandInFeatures(), progress=False)["2048"])
    return save_stats(path, mu, sigma)


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
    # the engine's resolved training precision (info["precision"]) wins over the config's setting
    seen.clear()
    resolved = "fp32" if precision == "bf16" else "bf16"
    hooks.ShapesEval(per_class=1, seed=5, progress=False, save_grid=False)(
        "end", {"denoiser": shapes_den, "config": cfg, "precision": resolved}
    )
    assert seen == [(cfg.sampler, resolved, 5)]
    # without a run config: the default sampler in fp32
    seen.clear()
    hooks.ShapesEval(per_class=1, progress=False)("end", {"denoiser": shapes_den})
    assert seen == [(SamplerConfig(), "fp32", 0)]


def test_a_split_evaluation_needs_a_process_group_and_a_valid_rank(shapes_den):
    cb = hooks.ShapesEval(per_class=1, progress=False)
    with pytest.raises(RuntimeError, match=r"world_size=2 but no process group.*init_process_group"):
        cb("end", {"denoiser": shapes_den, "rank": 1, "world_size": 2, "is_main": False})
    with pytest.raises(ValueError, match=r"0 <= rank < world_size, found rank=2, world_size=2"):
        cb("end", {"denoiser": shapes_den, "rank": 2, "world_size": 2})
    assert cb.last is None  # nothing was evaluated


class _FakeWorld:
    """``dist.gather_to_main`` over simulated ranks in one process: call the callback of ranks 1 … W−1 first
    (their objects are kept, they get None), then rank 0 (it gets every rank's object, in rank order)."""

    def __init__(self, monkeypatch, world_size: int) -> None:
        self.world_size, self.kept, self.calls = world_size, {}, []
        monkeypatch.setattr(hooks.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(hooks.dist, "gather_to_main", self.gather)
        self.rank = 0

    def gather(self, obj):
        self.calls.append(self.rank)
        self.kept[self.rank] = obj
        return [self.kept[r] for r in range(self.world_size)] if self.rank == 0 else None

    def run(self, cb, event: str, info: dict) -> list:
        out = []
        for r in [*range(1, self.world_size), 0]:
            self.rank = r
            out.append(cb(event, {**info, "rank": r, "world_size": self.world_size, "is_main": r == 0}))
        return out


def test_shapes_shares_of_simulated_ranks_give_the_single_process_record(shapes_den, tmp_path, monkeypatch):
    """The images of 3 ranks (16 images: shares of 6, 5 and 5) put back in plan order: the same metric and grid."""
    single = hooks.ShapesEval(per_class=1, seed=3, sampler=SCFG, progress=False)
    one = single("end", {"denoiser": shapes_den, "step": 4, "run_dir": str(tmp_path / "one")})
    split = hooks.ShapesEval(per_class=1, seed=3, sampler=SCFG, progress=False)
    world = _FakeWorld(monkeypatch, 3)
    out = world.run(split, "end", {"denoiser": shapes_den, "step": 4, "run_dir": str(tmp_path / "three")})
    assert out[:2] == [None, None] and world.calls == [1, 2, 0]  # every rank joins the one gather
    rec = out[2]
    assert {k: v for k, v in rec.items() if k not in ("seconds", "grid")} == {
        k: v for k, v in one.items() if k not in ("seconds", "grid")
    }
    grid = tmp_path / "three" / "samples" / "eval-shapes-step-000004.png"
    assert np.array_equal(_pixels(grid), _pixels(one["grid"]))
    assert len((tmp_path / "three" / "eval.jsonl").read_text().splitlines()) == 1


def test_fid_hook_with_an_injected_extractor(tiny, tmp_path):
    """FID/IS of the images generate_images makes, through a stand-in extractor (no torch-fidelity)."""
    den = tiny.denoiser(std=0.3)  # 8 px, 3 classes; images that differ (std 0.1 makes near-copies)
    ref = stand_in_ref_stats(tmp_path / "ref.npz")
    cb = hooks.FIDEval(ref, num=12, batch_size=5, sampler=SCFG, seed=2, extractor=StandInFeatures())
    cb.progress = False
    info = {"denoiser": den, "step": 9, "epoch": 3, "run_dir": str(tmp_path), "precision": "fp32"}
    assert cb("epoch_end", info) is None and cb.last is None  # every_epochs=0: only at the end
    rec = cb("end", info)
    images = generate_images(den, balanced_labels(3, num=12), SCFG, seed=2)
    expected = image_metrics(
        extract_features(images.split(5), StandInFeatures(), progress=False), cb.ref, prc=False
    )
    assert rec["fid"] == expected["fid"] > 0 and rec["n"] == 12
    assert rec["inception_score"] == expected["inception_score"]
    assert rec["metric"] == "fid" and rec["ref"] == str(ref) and cb.last == rec
    logged = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert len(logged) == 1 and logged[0]["fid"] == rec["fid"] and logged[0]["step"] == 9


def test_fid_shares_with_ranks_that_make_no_image(tiny, tmp_path, monkeypatch):
    """24 simulated ranks for 20 images: ranks 20 … 23 have none, still join the gather; same FID/IS."""
    den = tiny.denoiser(std=0.3)
    ref = stand_in_ref_stats(tmp_path / "ref.npz")
    kw = dict(num=20, batch_size=4, sampler=SCFG, extractor=StandInFeatures(), progress=False)
    info = {"denoiser": den, "step": 1, "epoch": 1, "precision": "fp32"}
    one = hooks.FIDEval(ref, **kw)("end", info)
    world = _FakeWorld(monkeypatch, 24)
    out = world.run(hooks.FIDEval(ref, **kw), "end", info)
    assert out[:-1] == [None] * 23 and sorted(world.calls) == list(range(24))
    assert [len(world.kept[r][0]) for r in (0, 19, 20, 23)] == [1, 1, 0, 0]
    # the images are the same; the features only up to the rounding of other batch sizes in the conv
    assert out[-1]["fid"] == pytest.approx(one["fid"], rel=1e-6) and out[-1]["n"] == 20
    assert out[-1]["inception_score"] == pytest.approx(one["inception_score"], rel=1e-6)
    assert one["inception_score"] > 1.05


def test_fid_hook_arguments(tmp_path):
    ref = stand_in_ref_stats(tmp_path / "ref.npz")
    with pytest.raises(ValueError, match="num must be >= 10.*found 4"):
        hooks.FIDEval(ref, num=4, extractor=StandInFeatures())
    with pytest.raises(ValueError, match="either inception_weights or extractor"):
        hooks.FIDEval(ref, inception_weights=tmp_path / "w.pth", extractor=StandInFeatures())


def test_an_extractor_without_the_expected_features_is_named(tiny, tmp_path):
    ref = stand_in_ref_stats(tmp_path / "ref.npz")
    cb = hooks.FIDEval(ref, num=10, sampler=SCFG, extractor=lambda im: {"pool": im.float()}, progress=False)
    with pytest.raises(ValueError, match=r"must return \['2048', 'logits_unbiased'\].*found keys \['pool'\]"):
        cb("end", {"denoiser": tiny.denoiser()})


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
