"""Generation without I/O: per-image seeds, balanced labels, the sampler driven from a Denoiser, batches.

Every path that turns a trained Denoiser into images goes through here — ``jitkit sample``, the training
previews, evaluation during training, the demo, ``jitkit bench`` and the experiments — so one seed gives the
same images everywhere.

Reproducibility: the starting noise of image i is drawn from its own generator seeded by
SeedSequence([seed, i]), so image i depends only on (seed, i, its label, the model, the sampler and the
precision) — not on the batch it falls in, the number of processes, or whether a job was resumed.

Shape key: N images, B batch, C channels, S side; z [B, C, S, S]; y [B].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.sampling import Trajectory, VelocityFn, sample, to_uint8
from jitkit.runtime import autocast, resolve_precision

__all__ = [
    "balanced_counts",
    "balanced_labels",
    "cast_for_inference",
    "check_noise",
    "denoiser_velocity",
    "generate_images",
    "image_seed",
    "image_shape",
    "indexed_noise",
    "invert_denoiser",
    "rank_indices",
    "sample_denoiser",
]


def image_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image ``index`` of a job with ``seed`` (distinct pairs give unrelated seeds)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def indexed_noise(
    indices: Sequence[int], shape: tuple[int, ...], noise_scale: float, seed: int
) -> torch.Tensor:
    """noise_scale·N(0, I) [len(indices), *shape] on the CPU; row k depends only on (seed, indices[k])."""
    out = torch.empty((len(indices), *shape))
    for k, i in enumerate(indices):
        g = torch.Generator().manual_seed(image_seed(seed, int(i)))
        out[k] = torch.randn(shape, generator=g)
    return out * noise_scale


def balanced_counts(
    num_classes: int,
    *,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    num: int | None = None,
) -> list[tuple[int, int]]:
    """(class, count) runs of the labels to generate, class-major.

    ``classes`` (default: all) × ``per_class`` images; or ``num`` images balanced over the classes (the first
    num mod C classes get one more). ``per_class`` and ``num`` are exclusive; neither → 1 per class.
    """
    cls = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in cls if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class indices must lie in [0, {num_classes - 1}] for this model, found {bad}")
    if not cls:
        raise ValueError("no classes to sample: classes is empty")
    if per_class is not None and num is not None:
        raise ValueError("give either per_class or num, not both")
    if num is not None:
        if num < 1:
            raise ValueError(f"num must be >= 1, found {num}")
        q, r = divmod(int(num), len(cls))
        return [(c, q + (1 if k < r else 0)) for k, c in enumerate(cls)]
    per = 1 if per_class is None else int(per_class)
    if per < 1:
        raise ValueError(f"per_class must be >= 1, found {per}")
    return [(c, per) for c in cls]


def balanced_labels(
    num_classes: int,
    *,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    num: int | None = None,
) -> np.ndarray:
    """The labels of :func:`balanced_counts` as one array [N] (small jobs; large ones use the runs)."""
    runs = balanced_counts(num_classes, classes=classes, per_class=per_class, num=num)
    return np.concatenate([np.full(n, c, dtype=np.int64) for c, n in runs])


def rank_indices(n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The plan indices rank ``rank`` of ``world_size`` makes: i ≡ rank (mod world_size)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), found rank={rank}, world_size={world_size}")
    return list(range(rank, n, world_size))


def image_shape(denoiser: torch.nn.Module) -> tuple[int, int, int]:
    """(C, S, S) of the images a Denoiser's network makes."""
    cfg = denoiser.net.cfg
    return (cfg.in_channels, cfg.img_size, cfg.img_size)


def cast_for_inference(denoiser: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Keep the weights of a Denoiser that samples in bf16/fp16 in that dtype, in place; returns it.

    The weight and bias of every ``nn.Linear`` and ``nn.Conv2d`` become the half dtype (half the memory);
    everything else — norm weights, the label table, position tables, buffers — stays float32. Under the
    precision's autocast (which sampling enters) a product then takes its half-precision weights as they are
    instead of casting the float32 ones at every call: the same rounding, so the same numbers, without the
    casts. For ``fp32`` (and ``auto``, which the caller resolves first) nothing changes. Only for sampling:
    the weights are no longer float32 masters.
    """
    if precision not in ("bf16", "fp16"):
        return denoiser
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    for m in denoiser.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.to(half)
    denoiser.inference_dtype = half
    return denoiser


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def denoiser_velocity(denoiser: torch.nn.Module, precision: str = "fp32") -> VelocityFn:
    """v(z, t, y) of a Denoiser: the network under the precision's autocast, converted to v in float32."""
    device = _device_of(denoiser)
    precision = resolve_precision(precision, device)

    def velocity(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return denoiser.predict(z, t, y, kind="v").float()

    return velocity


@torch.no_grad()
def sample_denoiser(
    denoiser: torch.nn.Module,
    z0: torch.Tensor,
    y: torch.Tensor,
    sampler_cfg: SamplerConfig,
    *,
    precision: str = "fp32",
    trajectory: Trajectory | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate a Denoiser's flow from noise ``z0`` to images (floats in about [−1, 1]).

    The null class and t_eps come from the Denoiser; ``trajectory`` and ``on_step`` as in
    :func:`jitkit.diffusion.sampling.sample`.
    """
    return sample(
        denoiser_velocity(denoiser, precision),
        z0,
        y,
        sampler_cfg,
        denoiser.null_class,
        t_eps=denoiser.cfg.t_eps,
        trajectory=trajectory,
        on_step=on_step,
    )


@torch.no_grad()
def invert_denoiser(
    denoiser: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sampler_cfg: SamplerConfig,
    *,
    precision: str = "fp32",
    iters: int = 4,
    sweeps: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The noise [B, C, S, S] from which :func:`sample_denoiser` (same sampler, labels ``y``) regenerates the
    images ``x`` (floats in [−1, 1]); see :func:`jitkit.diffusion.inversion.invert`."""
    from jitkit.diffusion.inversion import invert

    if tuple(x.shape[1:]) != image_shape(denoiser):
        raise ValueError(
            f"images to invert must have the model's shape [B, {', '.join(map(str, image_shape(denoiser)))}], "
            f"found {list(x.shape)}"
        )
    return invert(
        denoiser_velocity(denoiser, precision),
        x.to(_device_of(denoiser)),
        y.to(_device_of(denoiser)),
        sampler_cfg,
        denoiser.null_class,
        t_eps=denoiser.cfg.t_eps,
        iters=iters,
        sweeps=sweeps,
        on_step=on_step,
    )


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        disable=not enabled,
        desc=desc,
        unit="img",
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} img [{elapsed}<{remaining}, {rate_fmt}]",
    )


def check_noise(noise: torch.Tensor, shape: tuple[int, ...], count: int) -> None:
    """Raise unless ``noise`` holds at least ``count`` starting points of the model's image ``shape``."""
    if tuple(noise.shape[1:]) != tuple(shape):
        raise ValueError(
            f"noise must have the model's image shape [N, {', '.join(map(str, shape))}], found {list(noise.shape)}"
        )
    if noise.shape[0] < count:
        raise ValueError(f"noise holds {noise.shape[0]} starting points, the plan needs {count}")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise must be finite, found NaN or inf values")


@torch.no_grad()
def generate_images(
    denoiser: torch.nn.Module,
    labels: Any,
    sampler_cfg: SamplerConfig,
    *,
    seed: int = 0,
    batch_size: int = 16,
    precision: str = "fp32",
    indices: Sequence[int] | None = None,
    on_batch: Callable[[list[int], torch.Tensor, np.ndarray], None] | None = None,
    progress: bool = False,
    desc: str = "sampling",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One image per label from a Denoiser (put in eval mode, on its own device) → uint8 [N, C, S, S] on the CPU.

    ``indices``: the plan index of each label (default 0 … N−1); image k starts from the noise of
    (seed, indices[k]). ``on_batch(indices, images_uint8, labels)`` is called after every batch (writers).
    ``precision``: auto | fp32 | bf16 | fp16 (autocast on the device; fp32 is exact).
    ``progress``: a bar counting images (fractions while a batch is under way) with images/s and ETA.
    ``noise``: the starting noise of every plan index, [M, C, S, S] with M > max(indices) (e.g. from
    ``jitkit invert``), used instead of the seeded noise; image k starts from ``noise[indices[k]]``.
    """
    y_all = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(
        -1
    )
    n = len(y_all)
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(idx) != n:
        raise ValueError(f"{n} labels but {len(idx)} indices; expected one plan index per label")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    denoiser.eval()
    device = _device_of(denoiser)
    ncls = int(getattr(denoiser, "num_classes", 0) or 0)
    if n and ncls and (y_all.min() < 0 or y_all.max() >= ncls):
        raise ValueError(
            f"labels must lie in [0, {ncls - 1}] for this model, found {y_all.min()}..{y_all.max()}"
        )
    shape = image_shape(denoiser)
    if noise is not None:
        check_noise(noise, shape, max(idx) + 1 if idx else 0)
    out = torch.empty((n, *shape), dtype=torch.uint8)
    velocity = denoiser_velocity(denoiser, precision)
    bar = _progress_bar(n, progress, desc)
    try:
        for s in range(0, n, batch_size):
            bidx = idx[s : s + batch_size]
            b = len(bidx)
            y = torch.as_tensor(y_all[s : s + b], device=device)
            if noise is None:
                z0 = indexed_noise(bidx, shape, denoiser.cfg.noise_scale, seed).to(device)
            else:
                z0 = noise[torch.as_tensor(bidx)].to(device=device, dtype=torch.float32)

            def on_step(k: int, total: int, s: int = s, b: int = b) -> None:
                bar.update(min(s + b * k / total, n) - bar.n)  # fractional images while a batch runs

            z = sample(
                velocity, z0, y, sampler_cfg, denoiser.null_class, t_eps=denoiser.cfg.t_eps, on_step=on_step
            )
            imgs = to_uint8(z).cpu()
            out[s : s + b] = imgs
            bar.n = s + b
            bar.refresh()
            if on_batch is not None:
                on_batch(bidx, imgs, y_all[s : s + b])
    finally:
        bar.close()
    return out
