"""What ``jitkit bench`` measures: one configuration (:class:`BenchSettings`), its choices, the quick preset and
the record of the settings as run (:func:`settings_record`). The measurements are in :mod:`jitkit.bench.measure`,
their timing and the comparison of variants in :mod:`jitkit.bench.runner`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from jitkit.bench.hardware import cpu_name, device_name
from jitkit.config import COMPILE_SCOPES, SAMPLERS, ConfigBase, ConfigError, ModelConfig, model_config
from jitkit.models.linear import BACKENDS, cpu_linear_backend
from jitkit.runtime import PRECISIONS
from jitkit.train.optim import OPTIMIZER_IMPLS

MODES = ("train", "forward", "sample", "all")
OPTIMS = OPTIMIZER_IMPLS  # fused | foreach | loop | fused-ema (jitkit.train.optim)
EMAS = ("foreach", "lerp", "loop", "none")
MEMORY = ("auto", "inprocess", "subprocess", "off")
CFG_MODES = ("batched", "separate")
CLOCKS = ("wall", "cpu")
CPU_LINEAR = BACKENDS  # auto | onednn | aten (jitkit.models.linear)
SAMPLE_INTERVAL = (0.1, 1.0)
# the timed AdamW: the reference's betas, no weight decay (the learning rate does not change the cost)
ADAMW = {"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.0}


@dataclass(frozen=True)
class BenchSettings(ConfigBase):
    """One configuration to measure. ``img_size``/``num_classes`` None = the model's registered default;
    ``precision`` auto | fp32 | bf16 | fp16 (:func:`jitkit.runtime.resolve_precision`)."""

    model: str = "JiT-B/16"
    img_size: int | None = None
    batch_size: int = 2
    device: str = "auto"
    precision: str = "fp32"
    mode: str = "all"
    sample_steps: int = 50
    sampler: str = "heun"  # the solver of the sample mode (jitkit.config.SAMPLERS)
    sample_batch_size: int | None = None
    cfg: float = 2.9
    threads: int | None = None
    attention: str = "sdpa"
    grad_checkpoint: bool = False
    compile: bool = False
    compile_scope: str = "blocks"  # training: blocks | model (JiT.compile_blocks(whole=...))
    channels_last: bool = False
    optim: str = "fused"
    ema: str = "foreach"
    item_sync: bool = False
    cfg_mode: str = "batched"
    tf32: bool = True
    cpu_linear: str = "auto"
    num_classes: int | None = None
    warmup: int = 2
    repeats: int = 5
    sample_repeats: int = 1
    gemm_seconds: float = 2.0
    gemm_n: int | None = None
    memory: str = "auto"
    clock: str = "wall"
    seed: int = 0

    def validate(self) -> None:
        if not self.modes() or any(m not in MODES[:3] for m in self.modes()):
            raise ConfigError(
                f"mode must be one of {MODES} or a comma list like train,forward; found {self.mode!r}"
            )
        choices = {
            "precision": PRECISIONS,
            "optim": OPTIMS,
            "ema": EMAS,
            "cfg_mode": CFG_MODES,
            "clock": CLOCKS,
            "cpu_linear": CPU_LINEAR,
            "memory": MEMORY,
            "sampler": SAMPLERS,
            "compile_scope": COMPILE_SCOPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, found {getattr(self, name)!r}")
        if self.cfg_mode == "separate" and self.sampler != "heun":
            raise ConfigError(
                f"cfg_mode 'separate' (the before-variant) samples with heun only, found sampler {self.sampler!r}"
            )
        self.check_at_least(1, "batch_size", "sample_steps", "repeats", "sample_repeats", "threads")
        self.check_at_least(0, "warmup")
        self.model_config().validate()

    def modes(self) -> tuple[str, ...]:
        if self.mode == "all":
            return MODES[:3]
        return tuple(m.strip() for m in self.mode.split(",") if m.strip())

    def model_config(self) -> ModelConfig:
        kw: dict[str, Any] = {"attention": self.attention, "grad_checkpoint": self.grad_checkpoint}
        if self.img_size is not None:
            kw["img_size"] = self.img_size
        if self.num_classes is not None:
            kw["num_classes"] = self.num_classes
        return model_config(self.model, **kw)

    def with_value(self, key: str, text: str) -> BenchSettings:
        """A copy with one setting given as text (a compared value: ``"1"``, ``"none"``, ``"8"``), coerced to
        the setting's type by :meth:`ConfigBase.replace`; a ``ConfigError`` names the setting otherwise."""
        return self.replace(**{key: text})


QUICK = {
    "model": "JiT-T/2",
    "batch_size": 4,
    "sample_steps": 3,
    "warmup": 1,
    "repeats": 3,
    "gemm_seconds": 0.3,
    "gemm_n": 512,
}


def settings_record(s: BenchSettings, device: torch.device, precision: str, tf32: bool) -> dict[str, Any]:
    """Every setting of ``s`` with the defaults resolved (``precision`` and ``tf32`` as asked for and, in
    ``precision_resolved`` and ``tf32_resolved``, as run), and the machine: torch, Python, CPU and device
    names."""
    mc = s.model_config()
    rec = s.to_dict()
    rec.update(
        {
            "img_size": mc.img_size,
            "num_classes": mc.num_classes,
            "device": str(device),
            "precision_resolved": precision,
            "tf32_resolved": tf32,  # TF32 was on for float32 matmuls (CUDA with compute capability >= 8.0)
            "threads": s.threads if s.threads is not None else torch.get_num_threads(),
            "torch": torch.__version__,
            # the float32 CPU linear backend the layers ran on (auto resolved); "-" off the CPU
            "cpu_linear_backend": (
                (cpu_linear_backend() if s.cpu_linear == "auto" else s.cpu_linear)
                if device.type == "cpu"
                else "-"
            ),
            "cpu": cpu_name(),
            "device_name": device_name(device),
            "python": sys.version.split()[0],
            # how --compile compiles: training per block; forward and sampling as jitkit sample does (one frozen
            # inference graph, JiT.compile_blocks(freeze=True))
            "compiled_as": (
                {
                    m: ("model graph" if s.compile_scope == "model" else "blocks")
                    if m == "train"
                    else "frozen graph"
                    for m in s.modes()
                }
                if s.compile
                else None
            ),
        }
    )
    return rec
