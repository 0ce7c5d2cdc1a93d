"""Configs: round trips, overrides, presets, and the errors people see."""

from __future__ import annotations

import json

import pytest

from jitkit.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    RunConfig,
    SamplerConfig,
    model_config,
    preset_dict,
    resolve_run_config,
)


def test_run_config_round_trips_through_json():
    cfg = resolve_run_config(preset_dict("imagenet256-h16"))
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves(name):
    cfg = resolve_run_config(preset_dict(name))
    assert cfg.model.img_size % cfg.model.patch_size == 0


def test_reference_hyper_parameters_in_imagenet_presets():
    b = resolve_run_config(preset_dict("imagenet256-b16"))
    assert (b.train.blr, b.train.beta1, b.train.beta2, b.train.weight_decay) == (5e-5, 0.9, 0.95, 0.0)
    assert (b.train.ema_decay1, b.train.ema_decay2, b.train.warmup_epochs) == (0.9999, 0.9996, 5.0)
    assert (b.diffusion.P_mean, b.diffusion.P_std, b.diffusion.noise_scale) == (-0.8, 0.8, 1.0)
    assert b.diffusion.label_drop_prob == 0.1 and b.model.hidden_size == 768
    assert resolve_run_config(preset_dict("imagenet512-b32")).diffusion.noise_scale == 2.0
    assert resolve_run_config(preset_dict("imagenet256-h16")).model.proj_dropout == 0.2


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: shapes, imagenet256-b16"):
        preset_dict("imagenet")


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'blrr' \(did you mean 'blr'\?\).*train.blr"):
        RunConfig().override({"blrr": 1.0})
    with pytest.raises(ConfigError, match="valid keys: name, img_size"):
        ModelConfig.from_dict({"img": 3})


def test_overrides_dotted_and_bare_with_type_coercion():
    cfg = RunConfig().override(
        {"train.blr": "1e-4", "depth": "6", "sampler.interval": "0.1,1", "compile": "true"}
    )
    assert cfg.train.blr == 1e-4 and cfg.model.depth == 6 and cfg.train.compile is True
    assert cfg.sampler.interval == (0.1, 1.0)
    with pytest.raises(ConfigError, match="ambiguous.*model.img_size.*data.img_size"):
        RunConfig().override({"img_size": 32})
    with pytest.raises(ConfigError, match="expected an integer, found '6.5'"):
        RunConfig().override({"model.depth": "6.5"})


def test_validation_messages():
    with pytest.raises(ConfigError, match="sampler must be one of"):
        SamplerConfig(method="dpm").replace(steps=3)
    with pytest.raises(ConfigError, match="0 <= LOW < HIGH <= 1"):
        SamplerConfig(interval=(0.5, 0.2)).replace()
    with pytest.raises(ConfigError, match="hidden_size \\(100\\) must be divisible by num_heads \\(3\\)"):
        model_config("JiT-T/4", hidden_size=100, num_heads=3)


def test_model_names_are_case_insensitive():
    assert model_config("jit-b/16").name == "JiT-B/16"
