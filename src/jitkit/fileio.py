"""Crash-safe file writes shared by every module that leaves files behind (no torch, no jitkit imports).

Every writer goes through :func:`atomic_write_with`: a temporary file in the target's folder, fsync'ed, then
renamed over the target, so a crash or kill leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it and rename it to ``path``.

    The temporary name keeps the target's suffix (``.name.XXXX.png``) so that writers which look at the file
    name (matplotlib, numpy) pick the right format. On any error the temporary file is removed and the
    previous ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if hasattr(os, "fchmod"):  # not on Windows, where mkstemp's mode is not the issue
                os.fchmod(f.fileno(), _new_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 under the umask): mkstemp makes its files 0o600,
    which would leave outputs unreadable to the rest of a lab's group."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically; the format comes from the suffix of ``path`` (e.g. ``.png``)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write_with(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in 4 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
