"""Run folders and self-describing checkpoints: save/load config + weights + EMAs + optimizer + RNG.

Layout (DESIGN, Formats)::

    RUN/config.json  classes.json  log.jsonl  loss.png  samples/step-NNNNNN.png
    RUN/checkpoints/last/            the latest state (replaced atomically at every save)
    RUN/checkpoints/step-NNNNNN/     kept numbered checkpoints
        model.safetensors ema1.safetensors ema2.safetensors   keys = Denoiser keys ``net.<path>``
        state.pt    optimizer / RNG / step / data position, read with torch.load(weights_only=True)
        meta.json   config + classes + step/epoch + jitkit version (written last)

Safety: a checkpoint is written into a temporary sibling folder, every file is fsync'ed, then the folder is
renamed into place. Replacing ``last`` renames the old folder to a backup first and deletes it only after
the new one is in place, so a crash or kill at any moment leaves a complete checkpoint that
``load_checkpoint`` finds (the backup is picked up when ``last`` itself is missing). Loading never
unpickles arbitrary objects: weights are safetensors, the rest is JSON or ``weights_only`` torch data.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jitkit.config import ModelConfig, RunConfig

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "DiskFullError",
    "FORMAT_VERSION",
    "check_state_dict",
    "find_checkpoints",
    "latest_checkpoint",
    "link_checkpoint",
    "load_checkpoint",
    "load_denoiser",
    "prune_checkpoints",
    "save_checkpoint",
    "step_dir_name",
]

FORMAT_VERSION = 1
WEIGHT_FILES = {"model": "model.safetensors", "ema1": "ema1.safetensors", "ema2": "ema2.safetensors"}
STATE_FILE = "state.pt"
META_FILE = "meta.json"
_STEP_RE = re.compile(r"^step-(\d+)$")
_BACKUP_PREFIX = ".old-"
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint (what was expected and what was found)."""


class CheckpointMismatchError(CheckpointError):
    """Weights whose names or shapes do not fit the requested architecture."""


class DiskFullError(OSError):
    """The disk filled up while writing a checkpoint; the previous checkpoint is untouched."""


@dataclass
class Checkpoint:
    """Everything stored in one checkpoint folder."""

    config: RunConfig
    classes: list[str]
    model: dict[str, torch.Tensor]
    ema1: dict[str, torch.Tensor] | None
    ema2: dict[str, torch.Tensor] | None
    state: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path = Path(".")

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))


def step_dir_name(step: int) -> str:
    return f"step-{int(step):06d}"


# -- writing -----------------------------------------------------------------------------------------------


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
    tmp = parent / f"{_TMP_PREFIX}{ckpt_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    full_meta = dict(meta or {})
    full_meta.update(
        {
            "format": FORMAT_VERSION,
            "jitkit_version": __version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config.to_dict(),
            "classes": list(classes),
            "files": [],
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
            backup = parent / f"{_BACKUP_PREFIX}{ckpt_dir.name}-{uuid.uuid4().hex[:8]}"
            os.replace(ckpt_dir, backup)
        os.replace(tmp, ckpt_dir)
        _fsync_path(parent, directory=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(e):
            raise DiskFullError(
                errno.ENOSPC,
                f"out of disk space while saving checkpoint {ckpt_dir} (free space on "
                f"{_free_space(parent)}); the previous checkpoint was kept. Free some space or point "
                f"--out somewhere larger, then resume with --resume auto",
            ) from e
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    _cleanup_stale(parent, ckpt_dir.name)
    return ckpt_dir


def _free_space(path: Path) -> str:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    return f"{free / (1 << 20):.1f} MiB left"


def _cleanup_stale(parent: Path, name: str) -> None:
    """Remove temporary folders of ``name`` left by killed writers (complete backups stay until replaced)."""
    for p in parent.glob(f"{_TMP_PREFIX}{name}-*"):
        pid = p.name[len(_TMP_PREFIX) + len(name) + 1 :].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    if (parent / name / META_FILE).exists():
        for p in parent.glob(f"{_BACKUP_PREFIX}{name}-*"):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def link_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` a copy of checkpoint folder ``src`` (hard links when possible, else copies), atomically."""
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f"{_TMP_PREFIX}{dst.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
        if _is_disk_full(e):
            raise DiskFullError(errno.ENOSPC, f"out of disk space while writing checkpoint {dst}") from e
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


# -- finding ------------------------------------------------------------------------------------------------


def _is_ckpt_dir(p: Path) -> bool:
    return p.is_dir() and (p / META_FILE).is_file() and (p / WEIGHT_FILES["model"]).is_file()


def _read_meta(p: Path) -> dict[str, Any]:
    try:
        return json.loads((p / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {p}: cannot read {META_FILE} ({e})") from e


def find_checkpoints(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders under ``RUN/checkpoints`` as (step, path), oldest first.

    Includes ``last``, ``step-NNNNNN`` and backups of ``last`` left by a kill in the middle of a save.
    """
    root = Path(ckpt_root)
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        if p.name.startswith(_TMP_PREFIX) or not _is_ckpt_dir(p):
            continue
        try:
            step = int(_read_meta(p).get("step", -1))
        except CheckpointError:
            continue
        # ties: prefer last, then numbered, then backups
        rank = 2 if p.name == "last" else (0 if p.name.startswith(_BACKUP_PREFIX) else 1)
        out.append((step, rank, p))
    out.sort(key=lambda x: (x[0], x[1]))
    return [(s, p) for s, _, p in out]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run folder (or of its ``checkpoints`` folder), else None."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    found = find_checkpoints(root)
    return found[-1][1] if found else None


_EXPECTED = (
    "expected a run folder (with checkpoints/), a checkpoint folder (with model.safetensors and meta.json) "
    "or a file inside one"
)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Map a run folder, checkpoints folder, checkpoint folder or a file inside one to a checkpoint folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; {_EXPECTED}")
    if p.is_file():
        if _is_ckpt_dir(p.parent):
            return p.parent
        if p.suffix in (".pth", ".pt", ".ckpt"):
            raise CheckpointError(
                f"{p} is a single file, not a jitkit checkpoint; {_EXPECTED}. If it is a checkpoint of "
                f"the JiT reference code, convert it first: jitkit import {p} --out RUN"
            )
        raise CheckpointError(f"{p} is a file; {_EXPECTED}")
    if _is_ckpt_dir(p):
        return p
    latest = latest_checkpoint(p)
    if latest is not None:
        return latest
    if (p / "config.json").is_file():
        raise CheckpointError(
            f"run folder {p} has no complete checkpoint yet (nothing under {p / 'checkpoints'}); {_EXPECTED}"
        )
    listing = ", ".join(sorted(x.name for x in p.iterdir())[:8]) or "nothing"
    raise CheckpointError(f"{p} is a folder holding {listing}; {_EXPECTED}")


# -- loading ------------------------------------------------------------------------------------------------


def _load_weights(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(
            f"cannot read weights {path}: {e} (the file is damaged or not safetensors)"
        ) from e
    if str(map_location) != "cpu":
        sd = {k: v.to(map_location) for k, v in sd.items()}
    return sd


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint. ``path``: a run folder (→ its latest checkpoint), a checkpoint folder or a file in one.

    Never unpickles arbitrary objects (safetensors for weights; ``torch.load(weights_only=True)`` for state).
    """
    ckpt = resolve_checkpoint_path(path)
    meta = _read_meta(ckpt)
    if "config" not in meta:
        raise CheckpointError(f"checkpoint {ckpt}: {META_FILE} has no 'config'; it was not written by jitkit")
    fmt = int(meta.get("format", 1))
    if fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {ckpt} has format {fmt}, this jitkit reads up to {FORMAT_VERSION}; upgrade jitkit"
        )
    config = RunConfig.from_dict(meta["config"], strict=False)
    weights: dict[str, dict[str, torch.Tensor] | None] = {}
    for key, fname in WEIGHT_FILES.items():
        f = ckpt / fname
        weights[key] = _load_weights(f, map_location) if f.is_file() else None
    state = None
    if (ckpt / STATE_FILE).is_file():
        try:
            state = torch.load(ckpt / STATE_FILE, map_location=map_location, weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"cannot read {ckpt / STATE_FILE}: {e} (only plain tensors/numbers are accepted)"
            ) from e
    assert weights["model"] is not None
    return Checkpoint(
        config=config,
        classes=list(meta.get("classes") or []),
        model=weights["model"],
        ema1=weights["ema1"],
        ema2=weights["ema2"],
        state=state,
        meta=meta,
        path=ckpt,
    )


def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    rows = [f"    {'field':<18} {'checkpoint':>14} {'requested':>14}"]
    for k in da:
        mark = "  <--" if da[k] != db.get(k) else ""
        rows.append(f"    {k:<18} {str(da[k]):>14} {str(db.get(k)):>14}{mark}")
    return "\n".join(rows)


def check_state_dict(
    model: torch.nn.Module,
    sd: dict[str, torch.Tensor],
    ckpt_cfg: ModelConfig | RunConfig | None = None,
    req_cfg: ModelConfig | RunConfig | None = None,
) -> None:
    """Raise ``CheckpointMismatchError`` unless ``sd`` has exactly the model's keys and shapes.

    The message names the first mismatching tensor with both shapes and prints both model configs.
    """
    if isinstance(ckpt_cfg, RunConfig):
        ckpt_cfg = ckpt_cfg.model
    if isinstance(req_cfg, RunConfig):
        req_cfg = req_cfg.model
    own = model.state_dict()
    problem = None
    for k, v in own.items():
        if k not in sd:
            problem = f"tensor {k!r} {list(v.shape)} of the model is missing from the checkpoint"
            break
        if tuple(sd[k].shape) != tuple(v.shape):
            problem = f"tensor {k!r}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
            break
    if problem is None:
        extra = [k for k in sd if k not in own]
        if extra:
            problem = f"the checkpoint has tensor {extra[0]!r} {list(sd[extra[0]].shape)} the model lacks"
    if problem is None:
        return
    msg = f"checkpoint weights do not fit the requested model: first mismatch is {problem}"
    if ckpt_cfg is not None and req_cfg is not None:
        msg += f"\n  checkpoint model: {ckpt_cfg.name}, requested model: {req_cfg.name}\n" + _config_diff(
            ckpt_cfg, req_cfg
        )
    raise CheckpointMismatchError(msg)


def load_denoiser(
    path: str | Path,
    ema: str = "1",
    device: str | torch.device = "cpu",
    model_cfg: ModelConfig | None = None,
) -> tuple[torch.nn.Module, RunConfig, list[str]]:
    """Build the Denoiser of a checkpoint with its EMA1 / EMA2 / raw weights, in eval mode, on ``device``.

    ``model_cfg`` (optional) asks for a specific architecture; weights that do not fit raise
    ``CheckpointMismatchError`` naming both configs and the first mismatching tensor.
    """
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.registry import build_model

    which = str(ema).lower()
    keys = {
        "1": "ema1",
        "ema1": "ema1",
        "2": "ema2",
        "ema2": "ema2",
        "none": "model",
        "model": "model",
        "raw": "model",
    }
    if which not in keys:
        raise ValueError(f"ema must be '1', '2' or 'none', found {ema!r}")
    ck = load_checkpoint(path)
    sd = getattr(ck, keys[which])
    if sd is None:
        have = [k for k in ("ema1", "ema2") if getattr(ck, k) is not None] + ["none"]
        raise CheckpointError(
            f"checkpoint {ck.path} has no {keys[which]} weights; available: {', '.join(have)}"
        )
    cfg = model_cfg or ck.config.model
    net = build_model(cfg)
    den = Denoiser(net, ck.config.diffusion, cfg.num_classes)
    check_state_dict(den, sd, ck.config.model, cfg)
    den.load_state_dict(sd)
    den.to(device).eval()
    return den, ck.config, ck.classes
