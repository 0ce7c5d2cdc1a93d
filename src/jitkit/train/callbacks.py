"""The callback contract of :func:`jitkit.train.train` (evaluation hooks, experiments and the demo use it).

A callback is ``cb(event, info)``, called on rank 0 only:

* ``"step"`` after every optimiser step; ``info`` also has ``loss`` (the step's mean loss over all ranks) and
  ``lr``;
* ``"epoch_end"`` after the last step of an epoch (``info["epoch"]`` is the epoch that ended);
* ``"end"`` once, after the final checkpoint and sample grid of a run that was not stopped.

``info`` always has ``step``, ``epoch``, ``run_dir``, ``config``, ``classes`` and ``device``, and a
``denoiser`` (the EMA1 weights in a Denoiser, eval mode) that is built only when a callback reads it.
A callback may raise :class:`StopTraining` to end the run after a checkpoint.
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
