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


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", float("nan"), float("inf"), "1e999"])
def test_non_finite_numbers_are_refused_wherever_a_float_is_read(bad):
    # --set, YAML (.nan, .inf) and config.json (NaN, Infinity) all pass through coerce_value
    with pytest.raises(ConfigError, match="blr: expected a finite number"):
        RunConfig().override({"train.blr": bad})
    with pytest.raises(ConfigError, match="expected a finite number"):
        RunConfig.from_dict(json.loads('{"diffusion": {"P_std": NaN}}'))
    with pytest.raises(ConfigError, match="interval: expected a finite number"):
        RunConfig().override({"sampler.interval": [0.0, bad]})
    assert RunConfig().override({"train.blr": "1e-4"}).train.blr == 1e-4


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("epochs", 0, "epochs must be >= 1, found 0"),
        ("epochs", -1, "epochs must be >= 1, found -1"),
        ("max_steps", -3, "max_steps must be >= 1 (or 0: the epochs decide), found -3"),
        ("log_every", 0, "log_every must be >= 1"),
        ("keep_ckpts", -1, "keep_ckpts must be >= 0"),
        ("blr", 0.0, "blr must be positive"),
        ("beta2", 1.0, "beta2 must lie in [0, 1)"),
    ],
)
def test_train_settings_that_cannot_work_are_refused(key, value, needle):
    with pytest.raises(ConfigError) as e:
        RunConfig().override({f"train.{key}": value})
    assert needle in str(e.value)


def test_epochs_zero_is_fine_when_max_steps_decides():
    assert RunConfig().override({"train.epochs": 0, "train.max_steps": 5}).train.max_steps == 5


@pytest.mark.parametrize("name,close", [("foo", None), ("JiT-X/9", "JiT-T/4"), ("JiT-B/61", "JiT-B/16")])
def test_an_unregistered_model_name_is_refused_with_the_closest(name, close):
    with pytest.raises(ConfigError) as e:
        resolve_run_config({"model": {"name": name, "img_size": 32}})
    msg = str(e.value)
    assert (
        f"unknown model {name!r}" in msg
        and "registered models: JiT-T/2" in msg
        and "missing patch_size" in msg
    )
    assert (f"did you mean {close!r}" in msg) if close else "did you mean" not in msg


def test_a_custom_architecture_under_its_own_name_gives_all_of_it(tiny):
    cfg = resolve_run_config({"model": dict(tiny.MODEL)})  # name "tiny", every architecture field given
    assert cfg.model.name == "tiny" and cfg.model.depth == 2 and cfg.model.hidden_size == 32


def test_flips_are_off_unless_a_preset_or_the_user_asks():
    from jitkit.config import DataConfig

    assert DataConfig().hflip is False
    assert resolve_run_config(preset_dict("shapes")).data.hflip is True  # the shapes are symmetric
    assert all(resolve_run_config(preset_dict(p)).data.hflip for p in PRESETS if p.startswith("imagenet"))


def test_a_preset_dict_is_a_copy():
    """Changing what preset_dict returns (callers layer YAML and flags into it) never changes the preset."""
    d = preset_dict("shapes")
    d["train"]["epochs"] = 1
    d["sampler"]["interval"].append(0.5)
    assert preset_dict("shapes")["train"]["epochs"] != 1
    assert preset_dict("shapes")["sampler"]["interval"] == [0.0, 1.0]
