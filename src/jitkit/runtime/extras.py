"""The optional extras (``pip install 'jitkit[extra]'``): one way to import them and to say what is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "require_extra"]


class MissingExtra(ImportError, ValueError):
    """An optional package is not installed or fails to import. An ImportError for callers that test for one,
    and a ValueError so that the command line reports it as an error of the environment (exit code 2) with
    what to install, instead of a traceback."""


def require_extra(module: str, extra: str, purpose: str, *, hint: str = "") -> ModuleType:
    """``import module``, or :class:`MissingExtra`: "``purpose`` needs the ``module`` package: pip install
    'jitkit[``extra``]'", then ``hint`` and what the import raised."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        more = f" {hint}" if hint else ""
        raise MissingExtra(
            f"{purpose} needs the {module} package: pip install 'jitkit[{extra}]'.{more} "
            f"(import {module} failed: {type(e).__name__}: {e})",
            name=module,
        ) from e
