"""Import checkpoints of the JiT reference code (``checkpoint-last.pth``) into jitkit run folders.

A reference checkpoint is a ``torch.save`` pickle of a dict with ``model``, ``model_ema1``, ``model_ema2``
(state dicts of the reference Denoiser, keys ``net.<path>``), ``args`` (an ``argparse.Namespace`` with the
training command line) and possibly ``optimizer`` and ``epoch``. It is read with
``torch.load(weights_only=True)`` where the only class allow-listed beyond tensors and plain containers is
``argparse.Namespace``: nothing in the file is executed, and any other pickled object is refused.

The jitkit config is inferred from ``args`` (model name such as ``JiT-B/16``, img_size, class_num, dropouts,
noise_scale, P_mean, P_std, t_eps, label_drop_prob, sampling method/steps, cfg, interval, EMA decays, LR
settings) and checked against the tensor shapes before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from jitkit.checkpoint.load import check_state_dict
from jitkit.checkpoint.store import save_checkpoint
from jitkit.config import MODEL_NAMES, RunConfig, model_config
from jitkit.config.presets import ARCHITECTURE_FIELDS
from jitkit.fileio import atomic_write_bytes

REFERENCE_KEYS = ("model", "model_ema1", "model_ema2", "args")
# the architecture fields an official checkpoint's args may override (its image and patch size come from the name)
_ARCH_OVERRIDES = tuple(f for f in ARCHITECTURE_FIELDS if f not in ("img_size", "patch_size"))


class ReferenceCheckpointError(ValueError):
    """A file that is not a usable JiT reference checkpoint."""


def _safe_namespace():
    ser = torch.serialization
    if hasattr(ser, "safe_globals"):
        return ser.safe_globals([argparse.Namespace])
    ser.add_safe_globals([argparse.Namespace])  # torch < 2.5: process-wide, same effect
    return contextlib.nullcontext()


def _check_torch_file(p: Path) -> None:
    """Refuse, saying what was found, a file that cannot be a torch.save checkpoint: empty, or neither a zip
    archive (torch.save's format since torch 1.6) nor a pickle (the legacy format; first byte 0x80)."""
    size = p.stat().st_size
    if size == 0:
        raise ReferenceCheckpointError(
            f"{p} is empty (0 bytes); expected the reference's checkpoint-last.pth written by torch.save (an "
            "interrupted download or copy? fetch it again)"
        )
    if zipfile.is_zipfile(p):
        return
    with open(p, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        raise ReferenceCheckpointError(
            f"{p} is a damaged zip archive ({size:,} bytes; its directory at the end is missing or broken): "
            "expected a complete checkpoint written by torch.save; a truncated download or copy? fetch it again"
        )
    if head[:1] != b"\x80":
        raise ReferenceCheckpointError(
            f"{p} is not a PyTorch checkpoint: expected a zip archive written by torch.save, found {size:,} "
            f"bytes starting with {head!r} (a truncated download, or another kind of file?)"
        )


def load_reference_checkpoint(path: str | Path) -> dict[str, Any]:
    """Unpickle a reference checkpoint without executing code (tensors, containers and Namespace only)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"reference checkpoint not found: {p}")
    if p.is_dir():
        cand = p / "checkpoint-last.pth"
        if cand.is_file():
            p = cand
        else:
            raise ReferenceCheckpointError(
                f"{p} is a folder; expected the reference's checkpoint file (e.g. {p / 'checkpoint-last.pth'}). "
                "A jitkit run folder needs no import: use it directly"
            )
    _check_torch_file(p)
    try:
        with _safe_namespace():
            ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        # "Unsupported global: GLOBAL x.y" or "Trying to load unsupported GLOBAL x.y whose module x is blocked"
        m = re.search(r"unsupported (?:global:? )?GLOBAL ([\w\.]+)", msg, re.IGNORECASE)
        if m is None and "weights only load failed" not in msg.lower():
            raise ReferenceCheckpointError(
                f"cannot read {p}: {msg.strip().splitlines()[-1][:200] if msg.strip() else type(e).__name__} "
                f"({type(e).__name__}); expected a checkpoint written by torch.save (the file may be truncated "
                "or damaged: copy it again)"
            ) from e
        found = (
            f" It contains a pickled object of type {m.group(1)}."
            if m
            else f" ({msg.strip().splitlines()[-1][:200] if msg.strip() else type(e).__name__})"
        )
        raise ReferenceCheckpointError(
            f"refusing to load {p}: it holds more than tensors, plain containers and argparse.Namespace.{found} "
            "jitkit does not execute pickled code; re-save the checkpoint with only state dicts and args"
        ) from e
    if not isinstance(ck, dict):
        raise ReferenceCheckpointError(
            f"{p}: expected a dict with keys {REFERENCE_KEYS}, found {type(ck).__name__}"
        )
    missing = [k for k in ("model", "args") if k not in ck]
    if missing:
        raise ReferenceCheckpointError(
            f"{p}: expected a JiT reference checkpoint with keys {', '.join(REFERENCE_KEYS)}; missing {missing}, "
            f"found {sorted(ck)}"
        )
    if not isinstance(ck["args"], (argparse.Namespace, dict)):
        raise ReferenceCheckpointError(
            f"{p}: 'args' should be an argparse.Namespace, found {type(ck['args']).__name__}"
        )
    return ck


def _clean_state_dict(sd: Any, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ReferenceCheckpointError(f"'{what}' should be a state dict of tensors")
    out = dict(sd)
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    if out and not any(k.startswith("net.") for k in out):
        out = {f"net.{k}": v for k, v in out.items()}  # a bare network state dict
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _arg(args: dict[str, Any], name: str, default: Any) -> Any:
    v = args.get(name, default)
    return default if v is None else v


def shapes_summary(sd: dict[str, torch.Tensor]) -> str:
    """What the tensors say about the architecture: width, depth, patch, grid, classes."""
    parts = []
    pe = sd.get("net.pos_embed")
    if pe is not None and pe.dim() == 3:
        parts.append(f"width {pe.shape[2]}, {pe.shape[1]} patches")
    depth = len({k.split(".")[2] for k in sd if k.startswith("net.blocks.")})
    if depth:
        parts.append(f"depth {depth}")
    w = sd.get("net.x_embedder.proj1.weight")
    if w is not None and w.dim() == 4:
        parts.append(f"patch {w.shape[-1]}, bottleneck {w.shape[0]}")
    e = sd.get("net.y_embedder.embedding_table.weight")
    if e is not None:
        parts.append(f"{e.shape[0] - 1} classes")
    return ", ".join(parts) or "no recognisable JiT tensors"


def config_from_args(args: argparse.Namespace | dict[str, Any]) -> RunConfig:
    """The jitkit RunConfig of a reference command line (its argparse Namespace)."""
    a = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    name = str(_arg(a, "model", "JiT-B/16"))
    canon = {n.lower(): n for n in MODEL_NAMES}
    if name.lower() not in canon:
        raise ReferenceCheckpointError(
            f"args.model is {name!r}, not a JiT size jitkit knows; registered: {', '.join(MODEL_NAMES)}"
        )
    # architecture fields some forks put on the command line override the registered size
    arch = {k: int(a[k]) for k in _ARCH_OVERRIDES if a.get(k) is not None}
    mc = model_config(
        canon[name.lower()],
        img_size=int(_arg(a, "img_size", 256)),
        num_classes=int(_arg(a, "class_num", 1000)),
        attn_dropout=float(_arg(a, "attn_dropout", 0.0)),
        proj_dropout=float(_arg(a, "proj_dropout", 0.0)),
        **arch,
    )
    d = {
        "model": mc.to_dict(),
        "diffusion": {
            "P_mean": float(_arg(a, "P_mean", -0.8)),
            "P_std": float(_arg(a, "P_std", 0.8)),
            "t_eps": float(_arg(a, "t_eps", 0.05)),
            "noise_scale": float(_arg(a, "noise_scale", 1.0)),
            "label_drop_prob": float(_arg(a, "label_drop_prob", 0.1)),
        },
        "sampler": {
            "method": str(_arg(a, "sampling_method", "heun")),
            "steps": int(_arg(a, "num_sampling_steps", 50)),
            "cfg": float(_arg(a, "cfg", 1.0)),
            "interval": [float(_arg(a, "interval_min", 0.0)), float(_arg(a, "interval_max", 1.0))],
        },
        "data": {"data": str(_arg(a, "data_path", "imagenet")), "img_size": mc.img_size},
        "train": {
            "epochs": int(_arg(a, "epochs", 600)),
            "batch_size": int(_arg(a, "batch_size", 128)),
            "blr": float(_arg(a, "blr", 5e-5)),
            "min_lr": float(_arg(a, "min_lr", 0.0)),
            "schedule": "cosine" if str(_arg(a, "lr_schedule", "constant")) == "cosine" else "constant",
            "warmup_epochs": float(_arg(a, "warmup_epochs", 5)),
            "weight_decay": float(_arg(a, "weight_decay", 0.0)),
            "ema_decay1": float(_arg(a, "ema_decay1", 0.9999)),
            "ema_decay2": float(_arg(a, "ema_decay2", 0.9996)),
            "seed": int(_arg(a, "seed", 0)),
        },
    }
    return RunConfig.from_dict(d)


def _json_safe(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    return str(v)


def _read_classes(path: str | Path | None, n: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(n)]
    p = Path(path)
    text = p.read_text()
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or len(names) != n:
        raise ReferenceCheckpointError(
            f"class names {p}: expected {n} class names (a JSON list or one per line), found "
            f"{len(names) if isinstance(names, list) else type(names).__name__}"
        )
    return [str(x) for x in names]


def import_reference(
    src: str | Path, out: str | Path, *, classes: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Convert a reference ``checkpoint-last.pth`` into a jitkit run folder ``out`` and return its path.

    The run folder gets ``config.json``, ``classes.json`` and ``checkpoints/last`` (model, ema1, ema2 as
    safetensors; meta with the reference args). Mismatches between args and tensors raise an error naming
    both configs and the first mismatching tensor.
    """
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.registry import build_model

    out = check_new_run_folder(out, overwrite)
    ck = load_reference_checkpoint(src)
    cfg = config_from_args(ck["args"])
    model = _clean_state_dict(ck["model"], "model")
    emas = {}
    for key in ("model_ema1", "model_ema2"):
        emas[key] = _clean_state_dict(ck[key], key) if key in ck and ck[key] is not None else None

    # check args against the tensors on the meta device (no memory): name both when they disagree
    with torch.device("meta"):
        den = Denoiser(build_model(cfg.model, device="meta"), cfg.diffusion, cfg.model.num_classes)
    try:
        check_state_dict(den, model)
    except ValueError as e:
        raise ReferenceCheckpointError(
            f"the checkpoint's args describe {cfg.model.name} at {cfg.model.img_size}px with "
            f"{cfg.model.num_classes} classes, but its tensors say: {shapes_summary(model)}. {e}"
        ) from e
    for key, sd in emas.items():
        if sd is None:
            continue
        missing = [k for k in model if k not in sd]
        if missing and all(k in model for k in sd):
            # EMA of parameters only: fill buffers from the model
            sd.update({k: model[k] for k in missing})
        try:
            check_state_dict(den, sd)
        except ValueError as e:
            raise ReferenceCheckpointError(f"'{key}' does not match 'model': {e}") from e

    classes_list = _read_classes(classes, cfg.model.num_classes)
    args_dict = _json_safe(vars(ck["args"]) if isinstance(ck["args"], argparse.Namespace) else ck["args"])
    epoch = ck.get("epoch")
    meta = {
        "step": 0,
        "epoch": int(epoch) + 1 if isinstance(epoch, int) else 0,
        "imported_from": str(Path(src).resolve()),
        "reference_args": args_dict,
    }
    return write_imported_run(
        out, cfg, classes_list, model, ema1=emas["model_ema1"], ema2=emas["model_ema2"], meta=meta
    )


def check_new_run_folder(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path, after checking it can take an imported run: new, empty, or ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out expects a folder (new or empty), found a file: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out {out} is not empty; choose a new folder or pass overwrite=True")
    return out


def write_imported_run(
    out: Path,
    cfg: RunConfig,
    classes: list[str],
    model: dict[str, torch.Tensor],
    *,
    ema1: dict[str, torch.Tensor] | None,
    ema2: dict[str, torch.Tensor] | None,
    meta: dict[str, Any],
) -> Path:
    """Write checked weights as a run folder: ``config.json``, ``classes.json``, ``checkpoints/last`` (atomic
    files; the checkpoint folder is renamed into place whole). Shared by every importer."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(out / "classes.json", (json.dumps(classes) + "\n").encode())
    save_checkpoint(
        out / "checkpoints" / "last",
        config=cfg,
        classes=classes,
        model=model,
        ema1=ema1,
        ema2=ema2,
        state=None,
        meta=meta,
    )
    return out
