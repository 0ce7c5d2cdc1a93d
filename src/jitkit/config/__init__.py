"""Typed, frozen configuration for every part of jitkit; never imports torch.

``base``: :class:`ConfigBase` (dict round trip, checked keys, typed coercion, validation) and errors;
``schema``: the sections of a run (model, diffusion, sampler, data, train) and :class:`RunConfig`;
``presets``: named presets, the registry of named model sizes, and resolving preset ← YAML ← flags.
"""

from jitkit.config.base import ConfigBase, ConfigError, coerce_value, diff_table, suggest
from jitkit.config.presets import (
    MODEL_NAMES,
    MODEL_SIZES,
    PRESETS,
    merge_dicts,
    model_config,
    preset_dict,
    resolve_run_config,
    resume_config,
)
from jitkit.config.schema import (
    ATTENTION_KINDS,
    COMPILE_SCOPES,
    GRIDS,
    LOG_SINKS,
    PREDICTIONS,
    SAMPLERS,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    RunConfig,
    SamplerConfig,
    TrainConfig,
)

__all__ = [
    "ATTENTION_KINDS",
    "COMPILE_SCOPES",
    "GRIDS",
    "LOG_SINKS",
    "MODEL_NAMES",
    "MODEL_SIZES",
    "PREDICTIONS",
    "PRESETS",
    "SAMPLERS",
    "ConfigBase",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "ModelConfig",
    "RunConfig",
    "SamplerConfig",
    "TrainConfig",
    "coerce_value",
    "diff_table",
    "merge_dicts",
    "model_config",
    "preset_dict",
    "resolve_run_config",
    "resume_config",
    "suggest",
]
