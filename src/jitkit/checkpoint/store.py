"""Writing checkpoint folders atomically: save, link a numbered copy, prune old ones.

A checkpoint is written into a temporary sibling folder, every file is fsync'ed, then the folder is renamed
into place. Replacing an existing folder (``last``) renames it to a backup first and deletes the backup only
after the new one is in place, so a crash or kill at any moment leaves a complete checkpoint that the reader
finds (it picks up the backup when ``last`` itself is missing).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from jitkit.checkpoint.layout import (
    BACKUP_PREFIX,
    FORMAT_VERSION,
    META_FILE,
    SHA256_KEY,
    STATE_FILE,
    STEP_PREFIX,
    TMP_PREFIX,
    WEIGHT_FILES,
    CheckpointError,
    DiskFullError,
    file_sha256,
)
from jitkit.config import RunConfig

__all__ = ["link_checkpoint", "prune_checkpoints", "save_checkpoint"]

_STEP_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")


def save_checkpoint(
    ckpt_dir: str | Path,
    *,
    config: RunConfig,
    classes: list[str],
    model: dict[str, torch.Tensor],
    ema1: dict[str, torch.Tensor] | None = None,
    ema2: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    The files go to a temporary sibling folder (each fsync'ed), which is then renamed to ``ckpt_dir``. An
    existing ``ckpt_dir`` is first renamed to a backup that is removed only once the new folder is in
    place. Running out of disk space raises ``DiskFullError`` and leaves any previous checkpoint intact.
    """
    from safetensors.torch import save_file

    from jitkit import __version__

    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint path {ckpt_dir} is a file; expected a folder (or a new path)")
    parent = ckpt_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(ckpt_dir)
    full_meta = dict(meta or {})
    full_meta.update(
        {
            "format": FORMAT_VERSION,
            "jitkit_version": __version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config.to_dict(),
            "classes": list(classes),
            "files": [],
            SHA256_KEY: {},
        }
    )
    full_meta.setdefault("step", 0)
    full_meta.setdefault("epoch", 0)
    try:
        tmp.mkdir()
        st_meta = {"format": str(FORMAT_VERSION), "model": config.model.name}
        for key, sd in (("model", model), ("ema1", ema1), ("ema2", ema2)):
            if sd is None:
                continue
            path = tmp / WEIGHT_FILES[key]
            save_file(_plain_tensors(sd, key), str(path), metadata=st_meta)
            _fsync_path(path)
            full_meta["files"].append(path.name)
            full_meta[SHA256_KEY][path.name] = file_sha256(path)
        if state is not None:
            path = tmp / STATE_FILE
            with open(path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            full_meta["files"].append(path.name)
        _write_bytes(tmp / META_FILE, (json.dumps(full_meta, indent=1) + "\n").encode())
        _fsync_path(tmp, directory=True)
        backup = None
        if ckpt_dir.exists():
            backup = parent / f"{BACKUP_PREFIX}{ckpt_dir.name}-{uuid.uuid4().hex[:8]}"
            os.replace(ckpt_dir, backup)
        os.replace(tmp, ckpt_dir)
        _fsync_path(parent, directory=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(
            e,
            f"saving checkpoint {ckpt_dir}",
            parent,
            ". Free some space or point the run somewhere larger, then resume it (resume='auto')",
        )
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    _cleanup_stale(parent, ckpt_dir.name)
    return ckpt_dir


def _raise_if_disk_full(e: BaseException, what: str, folder: Path, hint: str = "") -> None:
    """Raise :class:`DiskFullError` (from ``e``) saying what was being written, the free space and whether a
    previous checkpoint is left, when ``e`` is a disk-full error; otherwise return."""
    if _is_disk_full(e):
        raise DiskFullError(
            errno.ENOSPC,
            f"out of disk space while {what} ({_free_space(folder)} free on {folder}); {_kept(folder)}{hint}",
        ) from e


def link_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` a copy of checkpoint folder ``src`` (hard links when possible, else copies), atomically."""
    src, dst = Path(src), Path(dst)
    tmp = _tmp_sibling(dst)
    try:
        tmp.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            if not f.is_file():
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
                _fsync_path(tmp / f.name)
        _fsync_path(tmp, directory=True)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        _fsync_path(dst.parent, directory=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(e, f"writing checkpoint {dst}", dst.parent)
        raise
    return dst


def prune_checkpoints(ckpt_root: str | Path, keep: int) -> list[Path]:
    """Delete the oldest numbered checkpoints so at most ``keep`` remain (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return []
    numbered = sorted(
        (int(m.group(1)), p)
        for p in Path(ckpt_root).iterdir()
        if p.is_dir() and (m := _STEP_RE.match(p.name))
    )
    removed = []
    for _, p in numbered[: max(0, len(numbered) - keep)]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# -- helpers -----------------------------------------------------------------------------------------------


def _tmp_sibling(path: Path) -> Path:
    """``.tmp-NAME-PID-RANDOM`` beside ``path`` (the PID lets a later writer remove it once it is dead)."""
    return path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open directories; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _plain_tensors(sd: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what} state dict: {k!r} is a {type(v).__name__}, expected a tensor")
        full = getattr(v, "full_tensor", None)  # DTensor (FSDP2) → the whole tensor
        if callable(full):
            v = full()
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    # safetensors reports I/O failures as its own error type with the OS message inside
    msg = str(e).lower()
    return "no space left" in msg or "disk quota" in msg


def _free_space(path: Path) -> str:
    """The free space on ``path``'s file system, e.g. ``5.9 MiB`` (``an unknown amount`` if it cannot be read)."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "an unknown amount"
    return f"{free / (1 << 20):.1f} MiB"


def _kept(parent: Path) -> str:
    """What a failed write left to resume from: the complete checkpoint folders beside it, or that none exists."""
    try:
        kept = sorted(
            p.name
            for p in parent.iterdir()
            if p.is_dir() and not p.name.startswith(TMP_PREFIX) and (p / META_FILE).is_file()
        )
    except OSError:
        kept = []
    if not kept:
        return "there was no previous checkpoint to keep (this was the run's first)"
    return f"the previous checkpoint was kept (complete: {', '.join(kept)})"


def _cleanup_stale(parent: Path, name: str) -> None:
    """Remove temporary folders of ``name`` left by killed writers (complete backups stay until replaced)."""
    for p in parent.glob(f"{TMP_PREFIX}{name}-*"):
        pid = p.name[len(TMP_PREFIX) + len(name) + 1 :].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    if (parent / name / META_FILE).exists():
        for p in parent.glob(f"{BACKUP_PREFIX}{name}-*"):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
