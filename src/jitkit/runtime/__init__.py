"""What jitkit runs on: the device, the precision and autocast (``device``), and the processes of a
``torchrun`` job (``dist``, the only module that imports ``torch.distributed``)."""

from jitkit.runtime.device import (
    PRECISIONS,
    amp_dtype,
    autocast,
    resolve_device,
    resolve_precision,
    synchronize,
)

__all__ = ["PRECISIONS", "amp_dtype", "autocast", "resolve_device", "resolve_precision", "synchronize"]
