"""Training data: image folders, prepared caches, and the built-in ``shapes`` and ``swissroll-D`` sets.

``build_dataset(cfg, split)`` turns ``DataConfig.data`` into a data set whose items are
(uint8 tensor [3, S, S], int label) with ``.classes`` and ``.img_size``; ``make_loader`` wraps it in a
DataLoader sized for the host; ``to_model_range`` and ``random_hflip`` run on the training device.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from jitkit.config import DataConfig
from jitkit.data.datasets import ImageDataset, InMemoryDataset
from jitkit.data.loader import make_loader, plan_workers
from jitkit.data.transforms import from_model_range, random_hflip, to_model_range
from jitkit.runtime import dist

__all__ = [
    "ImageDataset",
    "InMemoryDataset",
    "build_dataset",
    "data_classes",
    "from_model_range",
    "make_loader",
    "plan_workers",
    "random_hflip",
    "to_model_range",
]

# Seed offset of the non-train splits of generated data sets (held-out images drawn from the same spec).
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_029}


def _split_seed(seed: int, split: str) -> int:
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SEED_OFFSET)}, found {split!r}")
    return int(seed) + SPLIT_SEED_OFFSET[split]


def _no_such_data(name: str) -> FileNotFoundError:
    if name.lower() in ("imagenet", "imagenette"):
        return FileNotFoundError(
            f"data {name!r} names no folder (jitkit downloads nothing): point data at your {name} "
            f"images (PATH/train/<class>/*, PATH/<class>/*) or to a cache made by `jitkit prepare`"
        )
    hint = " (did you mean 'shapes'?)" if difflib.get_close_matches(name.lower(), ["shapes"], n=1) else ""
    return FileNotFoundError(
        f"data {name!r}: expected 'shapes', 'swissroll-D', an image folder or a cache made by "
        f"`jitkit prepare`, found no such path{hint}"
    )


def data_classes(cfg: DataConfig, split: str = "train") -> list[str] | None:
    """The class names the data set of ``cfg.data`` will have, found without reading any image (to settle a
    config before training): the shapes' names, a cache's classes.json, an image folder's class folders (one
    folder of images: one class). None for data without classes (``swissroll-D``) or a cache that opening
    will refuse with its own message; a path that does not exist raises :func:`build_dataset`'s error."""
    import json

    name = str(cfg.data).strip()
    if name.lower() == "shapes":
        from jitkit.data.shapes import class_names

        return list(class_names())
    from jitkit.data.webdataset import is_shards, shards_classes

    if is_shards(name):
        try:
            return shards_classes(name)
        except (OSError, ValueError):
            return None  # opening the shards explains
    from jitkit.data.cache import is_cache
    from jitkit.data.swissroll import parse_swissroll_name

    path = Path(name).expanduser()
    if parse_swissroll_name(name) is not None:
        return None
    if not path.exists():
        raise _no_such_data(name)
    if not path.is_dir():
        return None  # a file: build_dataset says what was expected
    if is_cache(path):
        try:
            return list(json.loads((path / "classes.json").read_text()))
        except (OSError, ValueError):
            return None  # an unfinished or damaged cache: opening it explains
    from jitkit.data.folder import folder_classes

    return folder_classes(path, split)


def _prepared(ds: Any, img_size: int, hflip: bool, what: str, remedy: str) -> Any:
    """A prepared data set (cache or shards) checked against the requested image size, flips set."""
    if ds.img_size != img_size:
        raise ValueError(
            f"{what} {ds.img_size}px images but img_size={img_size} was requested; re-run `{remedy}` or set "
            f"img_size {ds.img_size}"
        )
    ds.hflip = hflip
    return ds


def build_dataset(cfg: DataConfig, split: str = "train") -> ImageDataset:
    """The data set named by ``cfg.data``.

    * ``shapes``: rendered in memory (``cfg.per_class`` per class at ``cfg.img_size``, seed ``cfg.seed``;
      the val/test splits use a fixed seed offset so they are held out).
    * ``swissroll-D``: a ``SwissRoll`` (items are float vectors [D], not images).
    * WebDataset shards (a folder with the manifest.json of ``jitkit prepare --format webdataset``, a
      brace pattern / .tar path of shards beside it, the same as http(s):// or file:// URLs, or a .txt list of
      shard paths / URLs): a ``ShardDataset`` streamed per epoch and rank (``data.webdataset``).
    * a prepared cache (a folder with ``manifest.json`` written by ``jitkit prepare``): memory-mapped,
      verified against its manifest.
    * an image folder: PATH/train/<class> (ImageNet layout; split 'val' reads PATH/val), PATH/<class>, or
      one folder of images (one class). Images are center-cropped to ``cfg.img_size`` on load.

    Training-split image data sets flip left-right in ``__getitem__`` when ``cfg.hflip``.
    """
    name = str(cfg.data).strip()
    hflip = bool(cfg.hflip) and split == "train"
    if name.lower() == "shapes":
        from jitkit.data.shapes import class_names, render_shapes

        images, labels = render_shapes(cfg.per_class, cfg.img_size, seed=_split_seed(cfg.seed, split))
        return InMemoryDataset(images, labels, class_names(), hflip=hflip, source="shapes")

    from jitkit.data.swissroll import SwissRoll, parse_swissroll_name

    D = parse_swissroll_name(name)
    if D is not None:
        # P depends on the seed only; held-out splits draw other points under the same P
        return SwissRoll(D, n=max(1, cfg.per_class), seed=cfg.seed, point_seed=_split_seed(cfg.seed, split))

    from jitkit.data.webdataset import is_shards, open_shards

    if is_shards(name):
        return _prepared(
            open_shards(name),
            cfg.img_size,
            hflip,
            f"shards {name} hold",
            f"jitkit prepare --format webdataset --size {cfg.img_size}",
        )
    path = Path(name).expanduser()
    if not path.exists():
        raise _no_such_data(name)
    from jitkit.data.cache import is_cache, open_cache

    if is_cache(path):
        return _prepared(
            open_cache(path),
            cfg.img_size,
            hflip,
            f"cache {path} holds",
            f"jitkit prepare --data SOURCE --size {cfg.img_size} --out CACHE",
        )
    from jitkit.data.folder import ImageFolderDataset

    # under torchrun every rank builds the data set; only rank 0 prints the layout line and warnings
    verbose = dist.rank() == 0
    return ImageFolderDataset(
        path, cfg.img_size, split=split, hflip=hflip, strict=cfg.strict, verbose=verbose
    )
