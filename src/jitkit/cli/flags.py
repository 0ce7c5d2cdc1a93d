"""Flags ↔ config fields, written once for every command.

A flag is named after the config field it sets (``--batch-size`` sets ``batch_size``); the few that are not
are listed in a command's ``renames``. Values stay as argparse gives them: the configs coerce and check them
(:class:`jitkit.config.ConfigBase`), and :func:`flag_error` puts the flag's name back into a config error.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Iterable
from typing import Any


def given_flags(
    args: argparse.Namespace, fields: Iterable[str], renames: dict[str, str] | None = None
) -> dict[str, Any]:
    """{field: value} of the flags that were given (not None) and name a field in ``fields`` (or are renamed
    to a field by ``renames``: flag dest → field)."""
    renames = renames or {}
    wanted = {f: f for f in fields} | renames
    return {
        wanted[dest]: v
        for dest, v in vars(args).items()
        if dest in wanted and v is not None and dest != "func"
    }


def flag_error(e: Exception, fields_to_flags: dict[str, str]) -> ValueError:
    """``e`` (an error naming a field first, e.g. "samples must be >= 1") with the field replaced by its flag."""
    msg = str(e)
    for field, flag in fields_to_flags.items():
        if msg.startswith((f"{field} ", f"{field}:")):
            return ValueError("--" + flag.replace("_", "-") + msg[len(field) :])
    return ValueError(msg)


def call_with_flags(fn: Callable[..., Any], args: argparse.Namespace, **more: Any) -> Any:
    """``fn(**flags)``: every flag named after a parameter of ``fn`` is passed to it (``more`` on top)."""
    params = inspect.signature(fn).parameters
    return fn(**{**{k: v for k, v in vars(args).items() if k in params}, **more})
