"""Sampler sweeps: the grid of settings, the best of a monotone mock metric, resuming, refusing another
request in the same folder, and storing a setting as a run's default sampler."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import jitkit.eval.sweep as sweep_mod
from jitkit.config import ConfigError, SamplerConfig
from jitkit.eval.sweep import SweepMetric, apply_sampler, best_row, run_sweep, setting_key, sweep_settings

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def den(tiny):
    return tiny.denoiser()  # 8 px, 3 classes


def brightness_metric() -> SweepMetric:
    """A mock metric that is monotone in the images: their mean brightness (more guidance, more contrast)."""

    def score(images: np.ndarray, labels: np.ndarray) -> dict:
        return {"brightness": float(images.astype(np.float64).mean()), "n": len(images)}

    return SweepMetric("mock", "brightness", True, score)


def test_settings_are_every_combination_and_checked():
    base = SamplerConfig(method="heun", steps=5, cfg=1.0)
    s = sweep_settings(base, cfgs=[1, 2], methods=["heun", "dpm++2m"], intervals=[(0, 1), (0.1, 1)])
    assert len(s) == 8 and len({setting_key(x) for x in s}) == 8
    assert [x.cfg for x in s[:2]] == [1.0, 2.0]  # cfg varies fastest
    assert setting_key(s[0]) == "heun-5-uniform-cfg1-int0-1"
    with pytest.raises(ConfigError, match="cfg.*finite"):
        sweep_settings(base, cfgs=[float("nan")])
    with pytest.raises(ConfigError, match="sampler must be one of heun, euler, dpm"):
        sweep_settings(base, cfgs=[1], methods=["ddim"])


def test_best_of_a_monotone_metric(den, tmp_path):
    base = SamplerConfig(method="euler", steps=2)
    settings = sweep_settings(base, cfgs=[1.0, 2.0, 4.0])
    calls = []

    def metric_score(images, labels):  # the mock prefers the largest cfg: score = cfg of the setting scored
        calls.append(1)
        return {"score": [1.0, 2.0, 4.0][len(calls) - 1]}

    res = run_sweep(
        den,
        settings,
        [0, 1, 2],
        SweepMetric("m", "score", True, metric_score),
        tmp_path / "s",
        classes=CLASSES,
    )
    assert res["best"]["cfg"] == 4.0 and len(res["rows"]) == 3
    lower = SweepMetric("m2", "score", False, lambda i, y: {"score": 0.0})
    assert best_row(res["rows"], "score", higher_is_better=False)["cfg"] == 1.0 and lower.key == "score"
    out = tmp_path / "s"
    assert (out / "table.md").read_text().count("| euler |") == 3 and (out / "sweep.png").is_file()
    assert len(list((out / "grids").glob("*.png"))) == 3 and (out / "results.csv").is_file()


def test_an_interrupted_sweep_resumes_without_resampling(den, tmp_path, monkeypatch):
    settings = sweep_settings(SamplerConfig(method="euler", steps=2), cfgs=[1.0, 1.5, 2.0])
    made = []
    real = sweep_mod.generate_images

    def counting(*a, **kw):
        made.append(a[2].cfg)
        if len(made) == 2:
            raise KeyboardInterrupt  # killed while sampling the second setting
        return real(*a, **kw)

    monkeypatch.setattr(sweep_mod, "generate_images", counting)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(den, settings, [0, 1, 2], brightness_metric(), tmp_path / "s", classes=CLASSES, seed=3)
    assert len((tmp_path / "s" / "results.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(
        sweep_mod, "generate_images", lambda *a, **kw: (made.append(a[2].cfg), real(*a, **kw))[1]
    )
    reused = []
    res = run_sweep(
        den,
        settings,
        [0, 1, 2],
        brightness_metric(),
        tmp_path / "s",
        classes=CLASSES,
        seed=3,
        on_row=lambda r, again: reused.append(again),
    )
    assert made[2:] == [1.5, 2.0] and reused == [
        True,
        False,
        False,
    ]  # the first setting was not sampled again
    # the same seed set: a setting sampled in one go equals the resumed one
    fresh = run_sweep(
        den, settings[:1], [0, 1, 2], brightness_metric(), tmp_path / "t", classes=CLASSES, seed=3
    )
    assert fresh["rows"][0]["brightness"] == res["rows"][0]["brightness"]


def test_another_request_in_the_same_folder_is_refused(den, tmp_path):
    settings = sweep_settings(SamplerConfig(method="euler", steps=2), cfgs=[1.0])
    run_sweep(den, settings, [0, 1], brightness_metric(), tmp_path / "s", classes=CLASSES, seed=0)
    with pytest.raises(ValueError, match="seed: folder has 0, now 1"):
        run_sweep(den, settings, [0, 1], brightness_metric(), tmp_path / "s", classes=CLASSES, seed=1)


def test_no_finite_score_is_an_error_not_a_pick():
    with pytest.raises(ValueError, match="no setting has a finite 'fid'"):
        best_row([{"fid": float("nan"), "cfg": 1.0}], "fid", higher_is_better=False)


def test_apply_sampler_rewrites_the_checkpoint_meta_and_logs_the_previous(tiny, tmp_path):
    from jitkit.checkpoint import load_denoiser, save_checkpoint
    from jitkit.config import preset_dict, resolve_run_config

    d = copy.deepcopy(preset_dict("shapes"))  # preset_dict shares its nested dicts with the preset table
    d["model"] = tiny.model_config().to_dict()
    rc = resolve_run_config(d)
    sd = tiny.denoiser().state_dict()
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last", config=rc, classes=CLASSES, model=sd, ema1=sd, ema2=sd)
    (run / "config.json").write_text(json.dumps(rc.to_dict()))
    weights = (run / "checkpoints" / "last" / "model.safetensors").read_bytes()
    new = rc.sampler.replace(method="dpm++2m", steps=8, cfg=2.5, time_grid="logsnr")
    prev = apply_sampler(run, new, reason="test")
    assert prev["method"] == rc.sampler.method and prev["cfg"] == rc.sampler.cfg
    _, cfg, _ = load_denoiser(run)
    assert cfg.sampler == new
    assert json.loads((run / "config.json").read_text())["sampler"]["time_grid"] == "logsnr"
    rec = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert rec["event"] == "sampler-default" and rec["previous"] == prev and rec["sampler"]["steps"] == 8
    assert (
        run / "checkpoints" / "last" / "model.safetensors"
    ).read_bytes() == weights  # only meta.json changed
