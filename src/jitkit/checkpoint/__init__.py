"""Run folders and self-describing checkpoints: save/load config + weights + EMAs + optimizer + RNG.

Layout (DESIGN, Formats)::

    RUN/config.json  classes.json  log.jsonl  loss.png  samples/step-NNNNNN.png
    RUN/checkpoints/last/            the latest state (replaced atomically at every save)
    RUN/checkpoints/step-NNNNNN/     kept numbered checkpoints
        model.safetensors ema1.safetensors ema2.safetensors   keys = Denoiser keys ``net.<path>``
        state.pt    optimizer / RNG / step / data position, read with torch.load(weights_only=True)
        meta.json   config + classes + step/epoch + jitkit version (written last)

Modules: ``layout`` (file names, format version, errors), ``store`` (atomic save, numbered copies,
pruning: a crash or kill at any moment leaves a complete checkpoint), ``load`` (finding the newest
complete checkpoint, path forms, loading without unpickling, weights → Denoiser), ``reference`` (import of
the JiT reference release's checkpoints), ``diffusers`` (export to and import from diffusers-style folders,
docs/ecosystem.md).
"""

from jitkit.checkpoint.layout import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMismatchError,
    DiskFullError,
    step_dir_name,
)
from jitkit.checkpoint.load import (
    Checkpoint,
    check_state_dict,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_denoiser,
    resolve_checkpoint_path,
)
from jitkit.checkpoint.store import link_checkpoint, prune_checkpoints, save_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "DiskFullError",
    "check_state_dict",
    "find_checkpoints",
    "latest_checkpoint",
    "link_checkpoint",
    "load_checkpoint",
    "load_denoiser",
    "prune_checkpoints",
    "resolve_checkpoint_path",
    "save_checkpoint",
    "step_dir_name",
]
