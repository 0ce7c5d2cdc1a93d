"""Where images to evaluate come from: a sample folder, an npz, or a data set (shapes, image folder, cache).

Everything is streamed in uint8 batches [B, 3, S, S] so that 50,000 images at 256 px never sit in memory at
once (except npz files, which numpy loads whole).

Shape key: N images, B batch, S side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jitkit.eval.sample_folder import IMAGE_EXTS, LABELS_CSV, list_images, load_npz, read_image

__all__ = [
    "ImageSource",
    "crop_size_needed",
    "dataset_source",
    "folder_source",
    "is_image_folder_of_files",
    "npz_source",
    "open_source",
]

# the side of the built-in shapes data set, the one data set whose size needs no asking
SHAPES_SIZE = 16


@dataclass
class ImageSource:
    """``n`` images of side ``size`` with ``batches(batch_size)`` → iterator of uint8 tensors [B, 3, S, S]."""

    description: str
    n: int
    size: int
    labels: np.ndarray | None
    _batches: Callable[[int], Iterator[torch.Tensor]]

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return self._batches(batch_size)


def is_image_folder_of_files(root: Path) -> bool:
    """True for a flat folder of image files (a sample folder), False for class folders / caches."""
    if (root / LABELS_CSV).is_file():
        return True
    if (root / "manifest.json").is_file():
        return False
    return any(p.suffix.lower() in IMAGE_EXTS for p in root.iterdir()) and not any(
        p.is_dir() for p in root.iterdir()
    )


def folder_source(root: str | Path) -> ImageSource:
    """A flat folder of images (a jitkit sample folder or any folder of same-sized images)."""
    root = Path(root)
    files, labels = list_images(root, exts=IMAGE_EXTS)
    if not files:
        raise ValueError(f"{root}: no images (png/jpg/jpeg/webp/bmp) found; expected a sample folder")
    first = read_image(files[0])
    if first.shape[1] != first.shape[2]:
        raise ValueError(f"{files[0]}: expected square images, found {first.shape[2]}x{first.shape[1]}")

    def batches(bs: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(files), bs):
            arrs = [read_image(f) for f in files[i : i + bs]]
            for f, a in zip(files[i : i + bs], arrs):
                if a.shape != first.shape:
                    raise ValueError(
                        f"{f}: size {a.shape[2]}x{a.shape[1]} differs from {files[0].name} "
                        f"({first.shape[2]}x{first.shape[1]}); a sample folder holds images of one size"
                    )
            yield torch.from_numpy(np.stack(arrs))

    return ImageSource(f"{len(files)} images in {root}", len(files), first.shape[1], labels, batches)


def npz_source(path: str | Path) -> ImageSource:
    """The images of an npz (``arr_0``/``images``, see ``load_npz``), loaded whole."""
    a, y, _ = load_npz(path)

    def batches(bs: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(a), bs):
            yield torch.from_numpy(a[i : i + bs])

    return ImageSource(f"{len(a)} images in {path}", len(a), a.shape[-1], y, batches)


def dataset_source(
    data: str, size: int | None, split: str = "auto", limit: int = 0, per_class: int = 200
) -> ImageSource:
    """A jitkit data set: ``shapes``, an image folder (ImageNet layout: split ``val`` by default when
    PATH/val exists), or a prepared cache; images are center-cropped to ``size`` (the ADM crop), which
    only ``shapes`` may leave out (its images are 16 px)."""
    from jitkit.config import DataConfig
    from jitkit.data import build_dataset

    p = Path(data).expanduser()
    if split == "auto":
        split = "val" if (p / "val").is_dir() else "train"
    if size is None:
        if data.strip().lower() != "shapes":
            raise ValueError(f"size is needed to center-crop the images of {data!r} (e.g. size=256)")
        size = SHAPES_SIZE
    ds = build_dataset(
        DataConfig(data=data, img_size=int(size), per_class=per_class, hflip=False), split=split
    )
    n = len(ds) if not limit else min(limit, len(ds))
    labels = None
    if hasattr(ds, "labels"):
        labels = np.asarray(ds.labels[:n])

    def batches(bs: int) -> Iterator[torch.Tensor]:
        if hasattr(ds, "images"):
            for i in range(0, n, bs):
                yield torch.as_tensor(ds.images[i : min(i + bs, n)])
            return
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, range(n)), batch_size=bs, shuffle=False, num_workers=min(4, _cpus())
        )
        for x, _ in loader:
            yield x

    classes = getattr(ds, "classes", [])
    return ImageSource(
        f"{n} images of {data} (split {split}, {len(classes)} classes, {size}px)",
        n,
        int(size),
        labels,
        batches,
    )


def _cpus() -> int:
    return max(0, (os.cpu_count() or 1) - 1)


def crop_size_needed(spec: str | Path) -> bool:
    """Whether ``open_source(spec)`` needs a ``size``: for an existing data set other than ``shapes`` (a
    sample folder or an npz keeps the size of its images; a missing path fails on its own)."""
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".npz" or str(spec).strip().lower() == "shapes" or not p.exists():
        return False
    return not (p.is_dir() and is_image_folder_of_files(p))


def open_source(
    spec: str | Path, *, size: int | None = None, split: str = "auto", limit: int = 0
) -> ImageSource:
    """Sample folder, npz, or a data set name/path (see ``dataset_source``)."""
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"npz file not found: {p}")
        return npz_source(p)
    if p.is_dir() and is_image_folder_of_files(p):
        return folder_source(p)
    if str(spec).strip().lower() != "shapes" and not p.exists():
        raise FileNotFoundError(
            f"{spec} does not exist; expected a sample folder, an .npz of images, 'shapes', an image folder "
            "or a prepared cache"
        )
    return dataset_source(str(spec), size, split, limit)
