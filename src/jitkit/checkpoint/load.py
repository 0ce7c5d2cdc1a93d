"""Finding and loading checkpoints: the newest complete one of a run, path forms, weights → a Denoiser.

Loading never unpickles arbitrary objects: weights are safetensors, the rest is JSON or ``weights_only``
torch data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jitkit.checkpoint.layout import (
    BACKUP_PREFIX,
    FORMAT_VERSION,
    META_FILE,
    SHA256_KEY,
    STATE_FILE,
    TMP_PREFIX,
    WEIGHT_FILES,
    CheckpointError,
    CheckpointMismatchError,
    file_sha256,
)
from jitkit.config import ModelConfig, RunConfig, diff_table

__all__ = [
    "Checkpoint",
    "LazyWeights",
    "check_state_dict",
    "checkpoint_meta",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "load_denoiser",
    "resolve_checkpoint_path",
]

_EXPECTED = (
    "expected a run folder (with checkpoints/), a checkpoint folder (with model.safetensors and meta.json) "
    "or a file inside one"
)
# the ``ema`` choices of load_denoiser → the weights they name
_WEIGHTS_OF = {
    "1": "ema1",
    "ema1": "ema1",
    "2": "ema2",
    "ema2": "ema2",
    "none": "model",
    "model": "model",
    "raw": "model",
}


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


# -- finding ------------------------------------------------------------------------------------------------


def _is_ckpt_dir(p: Path) -> bool:
    return p.is_dir() and (p / META_FILE).is_file() and (p / WEIGHT_FILES["model"]).is_file()


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The meta.json of a checkpoint (a run folder, a checkpoint folder or a file in one); no weights read."""
    return _read_meta(resolve_checkpoint_path(path))


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
        if p.name.startswith(TMP_PREFIX) or not _is_ckpt_dir(p):
            continue
        try:
            step = int(_read_meta(p).get("step", -1))
        except CheckpointError:
            continue
        # ties: prefer last, then numbered, then backups
        rank = 2 if p.name == "last" else (0 if p.name.startswith(BACKUP_PREFIX) else 1)
        out.append((step, rank, p))
    out.sort(key=lambda x: (x[0], x[1]))
    return [(s, p) for s, _, p in out]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run folder (or of its ``checkpoints`` folder), else None."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    found = find_checkpoints(root)
    return found[-1][1] if found else None


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Map a run folder, checkpoints folder, checkpoint folder or a file inside one to a checkpoint folder.

    ``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` is downloaded first (safetensors and JSON only; a diffusers-style
    repository becomes a cached run folder): see :mod:`jitkit.checkpoint.hub`.
    """
    if str(path).startswith("hf:/"):
        from jitkit.checkpoint.hub import hub_checkpoint_folder

        path = hub_checkpoint_folder(path)
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


class LazyWeights(Mapping):
    """A safetensors file as a read-only mapping that reads a tensor only when it is indexed (and keeps none).

    ``shape(key)`` reads the header only. Resuming a large model on many ranks reads each tensor when it is
    copied into the model or its shard, instead of every rank holding three whole state dicts in host RAM.
    """

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(
                f"cannot read weights {path}: {e} (the file is damaged or not safetensors)"
            ) from e

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self._shapes:
            raise KeyError(key)
        with safe_open(str(self.path), framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    def __contains__(self, key: object) -> bool:  # Mapping's default would read the tensor
        return key in self._shapes

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def shape_of(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """The shape of ``sd[key]`` without reading the tensor where ``sd`` is lazy."""
    return sd.shape(key) if isinstance(sd, LazyWeights) else tuple(sd[key].shape)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, lazy: bool = False
) -> Checkpoint:
    """Load a checkpoint. ``path``: a run folder (→ its latest checkpoint), a checkpoint folder or a file in one.

    ``lazy``: the weights are :class:`LazyWeights` (a tensor is read when indexed) and state.pt is memory-mapped,
    so that many ranks of one host resuming a large model share the page cache instead of each holding the
    whole checkpoint (``map_location`` is then the CPU). Never unpickles arbitrary objects (safetensors for
    weights; ``torch.load(weights_only=True)`` for state).
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
        if f.is_file():
            weights[key] = LazyWeights(f) if lazy else _load_weights(f, map_location)
            if not lazy:  # a lazy load (resume on many ranks) reads each tensor once and skips the hash
                _verify_sha256(f, meta)
        else:
            weights[key] = None
    state = None
    if (ckpt / STATE_FILE).is_file():
        try:
            where = "cpu" if lazy else map_location
            state = torch.load(ckpt / STATE_FILE, map_location=where, weights_only=True, mmap=lazy)
        except Exception as e:
            raise CheckpointError(
                f"cannot read {ckpt / STATE_FILE}: {e} (only plain tensors/numbers are accepted)"
            ) from e
    assert weights["model"] is not None  # resolve_checkpoint_path only returns folders with model weights
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


def _verify_sha256(f: Path, meta: dict[str, Any]) -> None:
    """Raise CheckpointError if meta.json records a sha256 for weight file ``f`` and the file has another."""
    expected = (meta.get(SHA256_KEY) or {}).get(f.name)
    if not expected:
        return  # written before hashes were recorded
    found = file_sha256(f)
    if found != expected:
        raise CheckpointError(
            f"weights {f} do not match their recorded sha256 (expected {expected}, found {found}): the file "
            "was damaged or replaced after saving; use another checkpoint or download it again"
        )


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
        if shape_of(sd, k) != tuple(v.shape):
            problem = f"tensor {k!r}: checkpoint {list(shape_of(sd, k))} vs model {list(v.shape)}"
            break
    if problem is None:
        # in-context tokens that a model with in_context_start == depth never uses (older runs saved them)
        unused = {"net.in_context_posemb", "in_context_posemb"}
        extra = [k for k in sd if k not in own and k not in unused]
        if extra:
            problem = f"the checkpoint has tensor {extra[0]!r} {list(shape_of(sd, extra[0]))} the model lacks"
    if problem is None:
        return
    msg = f"checkpoint weights do not fit the requested model: first mismatch is {problem}"
    if ckpt_cfg is not None and req_cfg is not None:
        table = diff_table(ckpt_cfg.to_dict(), req_cfg.to_dict(), "checkpoint", "requested")
        msg += f"\n  checkpoint model: {ckpt_cfg.name}, requested model: {req_cfg.name}\n{table}"
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

    which = _WEIGHTS_OF.get(str(ema).lower())
    if which is None:
        raise ValueError(f"ema must be '1', '2' or 'none', found {ema!r}")
    ck = load_checkpoint(path)
    sd = getattr(ck, which)
    if sd is None:
        have = [k for k in ("ema1", "ema2") if getattr(ck, k) is not None] + ["none"]
        raise CheckpointError(f"checkpoint {ck.path} has no {which} weights; available: {', '.join(have)}")
    cfg = model_cfg or ck.config.model
    net = build_model(cfg)
    den = Denoiser(net, ck.config.diffusion, cfg.num_classes)
    check_state_dict(den, sd, ck.config.model, cfg)
    den.load_state_dict(sd)
    den.to(device).eval()
    return den, ck.config, ck.classes
