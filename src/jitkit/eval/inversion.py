"""Inverting images to their starting noise, the noise file, and how well sampling reconstructs them.

The math is :func:`jitkit.diffusion.inversion.invert` (reached through
:func:`jitkit.diffusion.generate.invert_denoiser`); this module is its I/O and its measurement.

Noise file (``jitkit invert --out noise.npz``, read by ``jitkit sample --noise``): an ``.npz`` with

* ``noise`` float32 [N, C, S, S] — the starting points z_0;
* ``labels`` int64 [N] — the class each image was inverted with;
* ``classes`` str [K] — the model's class names;
* ``sampler`` str — the JSON of the sampler config used (the one that regenerates the images);
* ``sources`` str [N] — where each image came from.

Shape key: N images, C channels, S side.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.generate import generate_images, image_shape, invert_denoiser
from jitkit.fileio import atomic_write_bytes

__all__ = [
    "NoiseFile",
    "invert_images",
    "load_noise",
    "noise_digest",
    "reconstruction_error",
    "reconstruction_study",
    "save_noise",
]


@dataclass
class NoiseFile:
    """The contents of a noise file (see the module docstring)."""

    noise: torch.Tensor  # [N, C, S, S] float32
    labels: np.ndarray  # [N] int64
    classes: list[str]
    sampler: dict[str, Any] | None
    sources: list[str]


def save_noise(
    path: str | Path,
    noise: torch.Tensor,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    sampler_cfg: SamplerConfig,
    sources: Sequence[str] | None = None,
) -> Path:
    """Write a noise file atomically; ``path`` must end in .npz."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"a noise file is an .npz, found the name {str(path)!r}")
    z = noise.detach().float().cpu().numpy()
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if z.ndim != 4 or len(y) != len(z):
        raise ValueError(
            f"expected noise [N, C, S, S] and N labels, found {list(z.shape)} and {len(y)} labels"
        )
    buf = io.BytesIO()
    np.savez(
        buf,
        noise=z,
        labels=y,
        classes=np.asarray(list(classes), dtype=str),
        sampler=np.asarray(json.dumps(sampler_cfg.to_dict())),
        sources=np.asarray(list(sources) if sources is not None else [""] * len(y), dtype=str),
    )
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_noise(path: str | Path, shape: tuple[int, ...] | None = None) -> NoiseFile:
    """Read a noise file; with ``shape`` (C, S, S) refuse noise of another image shape, naming both."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"noise file not found: {path} (jitkit invert writes noise files)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "noise" not in f.files:
                raise ValueError(
                    f"{path}: expected an array 'noise' [N, C, S, S] (jitkit invert's output), found {f.files}"
                )
            z = np.asarray(f["noise"])
            y = np.asarray(f["labels"]) if "labels" in f.files else np.zeros(len(z), dtype=np.int64)
            classes = [str(c) for c in f["classes"]] if "classes" in f.files else []
            sampler = json.loads(str(f["sampler"])) if "sampler" in f.files else None
            sources = [str(s) for s in f["sources"]] if "sources" in f.files else [""] * len(z)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable noise file ({e})") from e
    if z.ndim != 4 or not np.issubdtype(z.dtype, np.floating):
        raise ValueError(f"{path}: expected float noise [N, C, S, S], found {z.dtype} {list(z.shape)}")
    if shape is not None and tuple(z.shape[1:]) != tuple(shape):
        raise ValueError(
            f"{path}: the noise has image shape {list(z.shape[1:])} but the model makes {list(shape)}; "
            "invert images with this model (jitkit invert RUN ...) to get noise it can use"
        )
    if not np.isfinite(z).all():
        raise ValueError(f"{path}: the noise holds NaN or inf values")
    if y.shape != (len(z),):
        raise ValueError(f"{path}: expected {len(z)} labels, found shape {list(y.shape)}")
    return NoiseFile(torch.from_numpy(z.astype(np.float32)), y.astype(np.int64), classes, sampler, sources)


def noise_digest(noise: torch.Tensor) -> str:
    """A short digest of the noise values (to refuse resuming a sample folder from other noise)."""
    return hashlib.sha256(noise.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _to_model(images: Any) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, S, S], found {x.dtype} {list(x.shape)}")
    return x.float() / 255.0 * 2.0 - 1.0  # the data's range: x = u8/255·2 − 1


@torch.no_grad()
def invert_images(
    denoiser: torch.nn.Module,
    images: Any,
    labels: Sequence[int] | np.ndarray,
    sampler_cfg: SamplerConfig,
    *,
    precision: str = "fp32",
    iters: int = 4,
    sweeps: int | None = None,
    batch_size: int = 16,
    on_batch: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The noise [N, C, S, S] (CPU, float32) from which ``sampler_cfg`` regenerates uint8 ``images`` [N, C, S, S]
    of classes ``labels``. ``on_batch(done, total)`` after each batch."""
    x_all = _to_model(images)
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
    if len(y_all) != len(x_all):
        raise ValueError(f"{len(x_all)} images but {len(y_all)} labels; expected one label per image")
    if tuple(x_all.shape[1:]) != image_shape(denoiser):
        raise ValueError(
            f"images must have the model's shape [N, {', '.join(map(str, image_shape(denoiser)))}], found "
            f"{list(x_all.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    denoiser.eval()
    out = torch.empty_like(x_all)
    for s in range(0, len(x_all), batch_size):
        b = slice(s, s + batch_size)
        out[b] = invert_denoiser(
            denoiser, x_all[b], y_all[b], sampler_cfg, precision=precision, iters=iters, sweeps=sweeps
        ).cpu()
        if on_batch is not None:
            on_batch(min(s + batch_size, len(x_all)), len(x_all))
    return out


def reconstruction_error(
    denoiser: torch.nn.Module,
    images: Any,
    labels: Sequence[int] | np.ndarray,
    noise: torch.Tensor,
    sampler_cfg: SamplerConfig,
    *,
    precision: str = "fp32",
    batch_size: int = 16,
) -> dict[str, float]:
    """Sample from ``noise`` and compare with the ``images``: RMS in model units ([−1, 1] pixels), PSNR in dB
    (peak-to-peak 2), mean absolute error in uint8 levels."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    rec = generate_images(denoiser, y, sampler_cfg, batch_size=batch_size, precision=precision, noise=noise)
    a, b = _to_model(images), _to_model(rec.numpy())
    mse = float((a - b).pow(2).mean())
    return {
        "rms": math.sqrt(mse),
        "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else math.inf,
        "mean_abs_u8": float((torch.as_tensor(np.asarray(images)).float() - rec.float()).abs().mean()),
    }


def reconstruction_study(
    denoiser: torch.nn.Module,
    images: Any,
    labels: Sequence[int] | np.ndarray,
    sampler_cfg: SamplerConfig,
    steps: Sequence[int],
    *,
    iters: int = 4,
    sweeps: int | None = None,
    precision: str = "fp32",
    batch_size: int = 16,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Invert and regenerate ``images`` with ``sampler_cfg`` at each number of ``steps``: one row per count
    with the reconstruction error (:func:`reconstruction_error`) and the noise's standard deviation (about 1
    when the inversion found plausible noise)."""
    from jitkit.diffusion.inversion import inversion_evaluations
    from jitkit.diffusion.sampling import network_evaluations

    rows = []
    for k in steps:
        scfg = sampler_cfg.replace(steps=int(k))
        z = invert_images(
            denoiser,
            images,
            labels,
            scfg,
            precision=precision,
            iters=iters,
            sweeps=sweeps,
            batch_size=batch_size,
        )
        err = reconstruction_error(
            denoiser, images, labels, z, scfg, precision=precision, batch_size=batch_size
        )
        row = {
            "method": scfg.method,
            "time_grid": scfg.time_grid,
            "steps": int(k),
            "iters": iters,
            "inversion_evaluations": inversion_evaluations(scfg, iters, sweeps),
            "sampling_evaluations": network_evaluations(scfg),
            "noise_std": float(z.std()),
            **err,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
