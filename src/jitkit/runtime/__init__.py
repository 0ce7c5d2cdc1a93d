"""What jitkit runs on: the device, the precision and autocast (``device``), and the processes of a
``torchrun`` job (``dist``, the only module that imports ``torch.distributed``)."""

from jitkit.runtime.device import (
    PRECISIONS,
    amp_dtype,
    autocast,
    choose_precision,
    needs_grad_scaler,
    resolve_device,
    resolve_precision,
    set_tf32,
    synchronize,
)

__all__ = [
    "PRECISIONS",
    "amp_dtype",
    "autocast",
    "choose_precision",
    "needs_grad_scaler",
    "resolve_device",
    "resolve_precision",
    "set_tf32",
    "synchronize",
]
