"""Stopping a run from the keyboard or the scheduler: the first SIGINT/SIGTERM asks the trainer to finish the
current step, save a checkpoint and return; a second one interrupts at once (``KeyboardInterrupt``)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any

__all__ = ["SignalFlag"]


class SignalFlag:
    """Records the first SIGINT/SIGTERM while installed (in the main thread; elsewhere it stays unset)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for since :meth:`install`."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """The received signal's name (``SIGINT``), or a note that the stop came from another rank."""
        return signal.Signals(self.signum).name if self.signum is not None else "a signal on another rank"

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n[jitkit] {signal.Signals(signum).name}: saving a checkpoint after this step "
            "(send it again to stop immediately)",
            file=sys.stderr,
            flush=True,
        )

    def restore(self) -> None:
        """Put back the handlers that were installed before :meth:`install`."""
        for s, h in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, h)
        self._old.clear()
