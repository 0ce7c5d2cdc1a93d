"""The checkpoint folder's layout (file names, format version, step folder names) and its errors.

Shared by the writer (``store``) and the reader (``load``); see the package docstring for the layout.
"""

from __future__ import annotations

from jitkit.fileio import file_sha256  # the weight files' checksums (in __all__)

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "STATE_FILE",
    "WEIGHT_FILES",
    "CheckpointError",
    "CheckpointMismatchError",
    "DiskFullError",
    "file_sha256",
    "step_dir_name",
]

FORMAT_VERSION = 1
WEIGHT_FILES = {"model": "model.safetensors", "ema1": "ema1.safetensors", "ema2": "ema2.safetensors"}
STATE_FILE = "state.pt"
META_FILE = "meta.json"
SHA256_KEY = "sha256"  # meta.json: {weight file name: hex sha256}, written at save, verified at load
STEP_PREFIX = "step-"
BACKUP_PREFIX = ".old-"  # a replaced ``last``, kept until its successor is in place
TMP_PREFIX = ".tmp-"  # a checkpoint being written


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint (what was expected and what was found)."""


class CheckpointMismatchError(CheckpointError):
    """Weights whose names or shapes do not fit the requested architecture."""


class DiskFullError(OSError):
    """The disk filled up while writing a checkpoint; the previous checkpoint is untouched."""


def step_dir_name(step: int) -> str:
    """The folder name of the numbered checkpoint of ``step``: ``step-NNNNNN``."""
    return f"{STEP_PREFIX}{int(step):06d}"
