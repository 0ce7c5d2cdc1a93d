"""What jitkit runs on: the device, the precision and autocast (``device``), the processes of a
``torchrun`` job (``dist``, the only module that imports ``torch.distributed``), process-wide settings
(``process``: the allocator), the free memory of the host or a GPU and the check that refuses a run that would not
fit (``memory``), and the optional extras (``extras``: importing them, saying what to install)."""

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
from jitkit.runtime.process import retain_freed_memory

__all__ = [
    "PRECISIONS",
    "amp_dtype",
    "autocast",
    "choose_precision",
    "needs_grad_scaler",
    "resolve_device",
    "resolve_precision",
    "retain_freed_memory",
    "set_tf32",
    "synchronize",
]
