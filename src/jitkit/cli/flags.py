"""Flags ↔ config fields, written once for every command.

A flag is named after the config field it sets (``--batch-size`` sets ``batch_size``); the few that are not
are listed in a command's ``renames``. Values stay as argparse gives them: the configs coerce and check them
(:class:`jitkit.config.ConfigBase`), and :func:`flag_error` puts the flag's name back into a config error.
"""

from __future__ import annotations

import argparse
import inspect
import re
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


def flag_error(e: Exception, params_to_flags: dict[str, str]) -> Exception:
    """``e`` with the parameters it names written as the flags that set them.

    Library errors name a parameter at the start of the message (``"size must be …"``) or as Python
    (``overwrite=True``, ``with strict=False``, ``ref_stats=X``); ``params_to_flags`` maps parameter → flag
    dest. Returns an exception of the same type (a ValueError for other types) with the rewritten message.
    """
    msg = str(e)
    for param, flag in params_to_flags.items():
        opt = "--" + flag.replace("_", "-")
        if msg.startswith((f"{param} ", f"{param}:")):
            msg = opt + msg[len(param) :]
        msg = re.sub(rf"\bwith {param}=False\b", f"without {opt}", msg)
        msg = re.sub(rf"\b{param}=True\b", opt, msg)
        msg = re.sub(rf"\b{param}=(?=\S)", f"{opt} ", msg)
    try:
        return type(e)(msg)
    except TypeError:  # an exception type that wants other arguments
        return ValueError(msg)


def call_with_flags(fn: Callable[..., Any], args: argparse.Namespace, **more: Any) -> Any:
    """``fn(**flags)``: every flag named after a parameter of ``fn`` is passed to it (``more`` on top); an
    error that names one of those parameters names its flag instead (:func:`flag_error`)."""
    params = inspect.signature(fn).parameters
    given = {k: v for k, v in vars(args).items() if k in params}
    try:
        return fn(**{**given, **more})
    except (ValueError, OSError) as e:
        raise flag_error(e, {k: k for k in given}) from e


def checked_out(args: argparse.Namespace) -> Any:
    """``args.out`` as a Path that can take a new run or export (new, empty, or ``--overwrite``); the check of
    :func:`jitkit.checkpoint.reference.check_new_run_folder`, its errors naming the flags."""
    from jitkit.checkpoint.reference import check_new_run_folder

    try:
        return check_new_run_folder(args.out, args.overwrite)
    except (NotADirectoryError, FileExistsError) as e:
        raise flag_error(e, {"out": "out", "overwrite": "overwrite"}) from e


def local_checkpoint(spec: str) -> str:
    """A command's checkpoint argument with ``hf://…`` resolved once (downloaded, or found in the cache) to its
    local folder, so that reading the meta and then the weights does not ask the Hub twice; other paths as
    given."""
    if str(spec).startswith("hf:/"):
        from jitkit.checkpoint import resolve_checkpoint_path

        return str(resolve_checkpoint_path(spec))
    return spec
