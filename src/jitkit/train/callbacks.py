"""The callback contract of :func:`jitkit.train.train` (evaluation hooks, experiments and the demo use it).

A callback is ``cb(event, info)``, called on **every rank** of a torchrun job (so pass the same callbacks to
``train`` on every rank; in one process there is one rank):

* ``"step"`` after every optimiser step; ``info`` also has ``loss`` (the step's mean loss over all ranks) and
  ``lr``;
* ``"epoch_end"`` after the last step of an epoch (``info["epoch"]`` is the epoch that ended);
* ``"end"`` once, after the final checkpoint and sample grid of a run that was not stopped.

``info`` always has ``step``, ``epoch``, ``run_dir``, ``config``, ``classes``, ``device``, ``precision``
(the resolved training precision), ``rank``, ``world_size`` and ``is_main`` (rank 0: the one that writes
files), and a ``denoiser`` (the EMA1 weights in a Denoiser, eval mode; in a bf16/fp16 run its matmul weights
are kept in that dtype, so sample it under ``info["precision"]``, e.g. ``generate_images(...,
precision=info["precision"])``). It is built when a callback reads it;
under FSDP it is gathered on every rank for "epoch_end" and "end" and is not available for "step".
Work that several ranks can share (sampling for an evaluation) should be split by ``rank`` and gathered
(``jitkit.runtime.dist``); only ``is_main`` writes.

A callback may raise :class:`StopTraining` to end the run after a checkpoint; raised on any rank, it stops
every rank at the same step (the engine reduces the request over the ranks after each event).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["Callback", "CallbackInfo", "StopTraining"]

Callback = Callable[[str, dict], Any]


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a callback to stop the run cleanly (a checkpoint is saved first)."""


class CallbackInfo(dict):
    """A callback's info dict whose ``denoiser`` is built by ``factory`` only when asked for (then kept)."""

    def __init__(self, factory: Callable[[], nn.Module], **kw: Any) -> None:
        super().__init__(**kw)
        self._factory = factory

    def __missing__(self, key: str) -> Any:
        if key == "denoiser":
            self["denoiser"] = self._factory()
            return self["denoiser"]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key == "denoiser" or super().__contains__(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default
