"""Where and in what precision jitkit computes: the one device resolution, the one precision vocabulary,
the one autocast context.

Precision (everywhere: train, sample, bench, demo) is one of ``auto | fp32 | bf16 | fp16``:

* ``fp32``: no autocast; every op in float32 (exact).
* ``bf16`` / ``fp16``: ``torch.autocast`` on the device with that dtype. Optimiser state, EMAs, the loss,
  the x̂ → v conversion and the sampler state stay float32 (the callers cast the network output up).
* ``auto``: bf16 on GPUs with native bf16 units (CUDA compute capability ≥ 8.0: Ampere and newer), fp16
  on older CUDA GPUs (T4, V100: their bf16 is emulated and slow; training adds a GradScaler), fp32 on MPS.
  On a CPU it is decided by measurement when the caller gives a probe (``jitkit.models.registry``
  ``precision_for_model``): bf16 where the CPU's bf16 GEMM runs at least ``CPU_BF16_PEAK_RATIO`` × its
  fp32 GEMM (bf16 matrix units such as AMX) *and* one block of the model itself, casts and element-wise work
  included, runs at least ``CPU_BF16_MODEL_RATIO`` × faster in bf16 the way it will run (forward + backward
  for training, the bf16-weight forward for sampling); on a small model the casts cost more than bf16 saves.
  fp32 otherwise, and without a probe.

Explicit ``bf16`` is refused where the device cannot run it (MPS before macOS 14), explicit ``fp16`` on CPUs.
TF32 (float32 storage, 10-bit-mantissa products on Ampere+ tensor cores) is switched by :func:`set_tf32`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

__all__ = [
    "DEVICE_KINDS",
    "PRECISIONS",
    "amp_dtype",
    "auto_precision",
    "autocast",
    "choose_precision",
    "mps_available",
    "native_bf16",
    "needs_grad_scaler",
    "resolve_device",
    "resolve_precision",
    "set_tf32",
    "synchronize",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BF16_PEAK_RATIO = 2.0  # the CPU's bf16 GEMM ÷ its fp32 GEMM (large square products) at least this
CPU_BF16_MODEL_RATIO = 1.2  # and a block of the model (casts included) at least this much faster in bf16
DEVICE_KINDS = ("cpu", "cuda", "mps")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → cuda if available, else mps if available, else cpu; an explicit device must exist here.

    Raises ``ValueError`` naming the device asked for and what to use instead.
    """
    name = str(device).strip()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_KINDS:
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, found {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available on this machine; use device auto or cpu")
    if dev.type == "mps" and not mps_available():
        raise ValueError(f"device {name}: MPS is not available on this machine; use device auto or cpu")
    return dev


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has bf16 matrix units: CUDA compute capability ≥ 8.0 (``torch.cuda.is_bf16_supported``
    also says yes where bf16 is only emulated, e.g. T4 and V100)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_capability(dev) >= (8, 0)
    if dev.type == "mps":
        return _mps_bf16()
    return False


def _mps_bf16() -> bool:
    mps = getattr(torch.backends, "mps", None)
    check = getattr(mps, "is_macos_or_newer", None)
    return bool(check(14, 0)) if callable(check) else False


def auto_precision(kind: str, bf16_native: bool) -> str:
    """What ``auto`` means on a device of ``kind`` (cpu | cuda | mps): see the module docstring."""
    if kind == "cuda":
        return "bf16" if bf16_native else "fp16"
    return "fp32"


def choose_precision(
    precision: str, device: torch.device | str, probe: Callable[[], dict] | None = None
) -> tuple[str, dict]:
    """``precision`` resolved for ``device`` (one of ``fp32 | bf16 | fp16``) and why, as a record.

    ``probe`` (CPU, ``auto`` only) returns ``{"speedup", "peak_speedup", …}`` measured for the model at hand
    (see the module docstring); its record is returned with the decision so that callers can print and
    save it. Explicit values are checked against the device.
    """
    dev = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision != "auto":
        if precision == "fp16" and dev.type == "cpu":
            raise ValueError("precision fp16 is not supported on CPU; use fp32 or bf16")
        if precision == "bf16" and dev.type == "mps" and not _mps_bf16():
            raise ValueError("precision bf16 on MPS needs macOS 14 or newer; use fp32 or fp16 on this Mac")
        return precision, {"requested": precision}
    if dev.type != "cpu" or probe is None:
        chosen = auto_precision(dev.type, dev.type == "cuda" and native_bf16(dev))
        why = "native bf16" if chosen == "bf16" else ("no native bf16" if dev.type == "cuda" else dev.type)
        return chosen, {"requested": "auto", "reason": why}
    rec = dict(probe())
    fast = rec["peak_speedup"] >= CPU_BF16_PEAK_RATIO and rec["speedup"] >= CPU_BF16_MODEL_RATIO
    rec.update(requested="auto", reason="measured", thresholds=[CPU_BF16_PEAK_RATIO, CPU_BF16_MODEL_RATIO])
    return ("bf16" if fast else "fp32"), rec


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` resolved for ``device`` without a measurement (``auto`` is fp32 on CPUs): see
    :func:`choose_precision`. Returns one of ``fp32 | bf16 | fp16``."""
    return choose_precision(precision, device)[0]


def needs_grad_scaler(precision: str, device: torch.device | str) -> bool:
    """Training in fp16 on a GPU (CUDA or MPS) scales the loss (``torch.amp.GradScaler``) against underflow."""
    return precision == "fp16" and torch.device(device).type in ("cuda", "mps")


def set_tf32(device: torch.device | str, enabled: bool) -> bool:
    """TF32 for float32 matmuls and convolutions on CUDA GPUs that have it (compute capability ≥ 8.0), on or
    off; returns whether it is on afterwards (always False off CUDA)."""
    dev = torch.device(device)
    on = bool(enabled) and dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 0)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    return on


def amp_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision (``fp32 | bf16 | fp16``)."""
    if precision not in _DTYPES:
        raise ValueError(
            f"precision must be fp32, bf16 or fp16 here (resolve 'auto' first), found {precision!r}"
        )
    return _DTYPES[precision]


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision: nothing for fp32, ``torch.autocast`` otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype(precision))


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()
