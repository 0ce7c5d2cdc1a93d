"""Export what a model trains on as a sample folder and/or a grid PNG (``jitkit data export``).

The folder is the one ``jitkit sample`` writes (DESIGN, Formats), written by :mod:`jitkit.eval.sample_folder`,
so any tool that judges samples (the shapes metric, FID) judges the training data the same way; the grid is
the one grid writer's (:func:`jitkit.images.save_grid`).

Shape key: N images, S side; images uint8 [N, 3, S, S].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jitkit.eval.sample_folder import check_replaceable, write_sample_folder
from jitkit.images import save_grid


def select_per_class(labels: np.ndarray, per_class: int | None, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` items of each class (all when None), ordered by class then position."""
    labels = np.asarray(labels)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        out.append(idx if per_class is None else idx[:per_class])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _load_source(source: str, per_class: int | None, size: int | None, seed: int, strict: bool):
    """(images uint8 [N, 3, S, S], labels [N], classes, skipped) for 'shapes', a cache or an image folder."""
    from jitkit.data.cache import is_cache, open_cache
    from jitkit.data.shapes import class_names, render_shapes

    if source.strip().lower() == "shapes":
        images, labels = render_shapes(per_class or 200, size or 16, seed=seed)
        return images, labels, class_names(), []
    p = Path(source).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"export source {source!r}: expected 'shapes', an image folder or a cache, found no such path"
        )
    if is_cache(p):
        ds = open_cache(p)
        if size is not None and size != ds.img_size:
            raise ValueError(
                f"cache {p} holds {ds.img_size}px images, found size {size}; leave size unset or re-run prepare"
            )
        idx = select_per_class(ds.labels.numpy(), per_class, len(ds.classes))
        return ds.images[idx].numpy(), ds.labels[idx].numpy(), ds.classes, []
    from tqdm import tqdm

    from jitkit.data.crop import UnreadableImage
    from jitkit.data.folder import ImageFolderDataset

    ds = ImageFolderDataset(p, size or 256, strict=strict, check=False)
    chosen, labels, skipped = [], [], []
    for c in tqdm(range(len(ds.classes)), desc="export", unit="class", disable=len(ds.classes) < 4):
        got = 0
        for i in np.flatnonzero(ds.targets == c):
            if per_class is not None and got >= per_class:
                break
            try:
                chosen.append(ds.load(int(i)))
            except UnreadableImage as e:
                if strict:
                    raise UnreadableImage(f"unreadable image {ds.path_of(int(i))}: {e}") from e
                skipped.append((ds.path_of(int(i)), str(e)))
                continue
            labels.append(c)
            got += 1
    if not chosen:
        raise FileNotFoundError(f"no readable images in {p}")
    return np.stack(chosen), np.asarray(labels, dtype=np.int64), ds.classes, skipped


def export_samples(
    source: str,
    out: str | Path | None,
    *,
    per_class: int | None = None,
    size: int | None = None,
    seed: int = 0,
    grid: str | Path | None = None,
    grid_per_class: int = 4,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> tuple[Path | None, int]:
    """Write ``source`` ('shapes', an image folder or a cache) as a sample folder at ``out`` and/or a grid.

    ``per_class`` limits the images per class (default: all; 200 for shapes), ``size`` the image side
    (shapes: 16, folders: 256 with the ADM crop; a cache keeps its own); the grid shows ``grid_per_class``
    images of each class, one row per class. The folder is written atomically (see
    :func:`jitkit.eval.sample_folder.write_sample_folder`). Returns (out, number of images).
    """
    from jitkit.data.folder import info, summarize_bad

    if out is None and grid is None:
        raise ValueError("nothing to do: give out (a folder) and/or grid (a .png file)")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, found {per_class}")
    if grid is not None and Path(grid).suffix.lower() != ".png":
        raise ValueError(f"a grid is written as a .png file, found the name {str(grid)!r}")
    dest = Path(out).expanduser() if out is not None else None
    if dest is not None:
        check_replaceable(dest, overwrite)  # before the (maybe long) loading
    images, labels, classes, skipped = _load_source(source, per_class, size, seed, strict)
    if skipped:
        info(summarize_bad(skipped, len(images) + len(skipped), source))
    if grid is not None:
        shown = select_per_class(labels, grid_per_class, len(classes))
        Path(grid).parent.mkdir(parents=True, exist_ok=True)
        save_grid(images[shown], labels[shown], grid, classes)
        info(
            f"wrote {grid} ({min(grid_per_class, per_class or grid_per_class)} per class, {len(classes)} classes)"
        )
    if dest is None:
        return None, len(images)
    write_sample_folder(dest, images, labels, classes, overwrite=overwrite, progress=progress)
    info(f"wrote {len(images):,} images in {len(classes):,} classes to {dest} (+ labels.csv)")
    return dest, len(images)
