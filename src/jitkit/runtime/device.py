"""Where and in what precision jitkit computes: the one device resolution, the one precision vocabulary,
the one autocast context.

Precision (everywhere: train, sample, bench, demo) is one of ``auto | fp32 | bf16 | fp16``:

* ``fp32``: no autocast; every op in float32 (exact).
* ``bf16`` / ``fp16``: ``torch.autocast`` on the device with that dtype. Optimiser state, EMAs, the loss,
  the x̂ → v conversion and the sampler state stay float32 (the callers cast the network output up).
* ``auto``: bf16 on CUDA (fp16 on GPUs without bf16), fp32 elsewhere.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "DEVICE_KINDS",
    "PRECISIONS",
    "amp_dtype",
    "autocast",
    "mps_available",
    "resolve_device",
    "resolve_precision",
    "synchronize",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
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


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` → bf16 on CUDA (fp16 on GPUs without bf16), fp32 elsewhere; explicit values are checked.

    Returns one of ``fp32 | bf16 | fp16``.
    """
    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and kind == "cpu":
        raise ValueError("precision fp16 is not supported on CPU; use fp32 or bf16")
    return precision


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
