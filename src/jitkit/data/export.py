"""Export what a model trains on as a sample folder (flat ``00000.png …`` + ``labels.csv``) and/or a grid PNG.

The sample folder is the layout ``jitkit sample`` writes (DESIGN, Formats), so any tool that judges samples
(e.g. the shapes metric, FID) can judge the training data the same way.

Shape key: N images, S side; images uint8 [N, 3, S, S]; grids are HWC uint8.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jitkit.fileio import atomic_write_bytes

LABELS_CSV = "labels.csv"


def image_name(i: int) -> str:
    return f"{i:05d}.png"


def _png_bytes(arr_hwc: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr_hwc).save(buf, format="PNG")
    return buf.getvalue()


def select_per_class(labels: np.ndarray, per_class: int | None, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` items of each class (all when None), ordered by class then position."""
    labels = np.asarray(labels)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        out.append(idx if per_class is None else idx[:per_class])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def class_grid(
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    per_class: int = 4,
    cell: int = 64,
    pad: int = 2,
) -> np.ndarray:
    """A grid with one column per class and ``per_class`` rows, class names (split at ``_`` into lines) on top.

    Images are enlarged by nearest neighbour to at least ``cell`` pixels so small ones stay crisp.
    """
    from PIL import Image, ImageDraw, ImageFont

    images = np.asarray(images)
    labels = np.asarray(labels)
    S = images.shape[-1]
    scale = max(1, -(-cell // S))
    T = S * scale
    font = ImageFont.load_default()
    lines = [str(c).split("_") for c in classes]
    n_lines = max(len(x) for x in lines)
    line_h = 13
    head = pad + n_lines * line_h + 2
    col_w = T + pad
    H = head + per_class * (T + pad) + pad
    W = pad + len(classes) * col_w
    grid = np.full((H, W, 3), 255, dtype=np.uint8)
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)[:per_class]
        for r, i in enumerate(idx):
            tile = images[i].transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)  # [T, T, 3]
            top, left = head + r * (T + pad), pad + c * col_w
            grid[top : top + T, left : left + T] = tile
    im = Image.fromarray(grid)
    draw = ImageDraw.Draw(im)
    for c, parts in enumerate(lines):
        for k, text in enumerate(parts):
            w = draw.textlength(text, font=font)
            x = pad + c * col_w + max(0, (T - w) / 2)
            draw.text((x, pad + k * line_h), text, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def save_class_grid(path: str | Path, images, labels, classes: Sequence[str], *, per_class: int = 4) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--grid expects a .png file name, found {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _png_bytes(class_grid(images, labels, classes, per_class=per_class)))
    return path


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
                f"cache {p} holds {ds.img_size}px images, found --size {size}; omit --size or re-run prepare"
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
    (shapes: 16, folders: 256 with the ADM crop; a cache keeps its own). The folder is written beside its
    destination and moved into place at the end, so an interrupted export leaves no half folder.
    Returns (out, number of images).
    """
    from tqdm import tqdm

    from jitkit.data.folder import info, summarize_bad

    if out is None and grid is None:
        raise ValueError("nothing to do: give --out DIR and/or --grid FILE.png")
    if per_class is not None and per_class < 1:
        raise ValueError(f"--per-class must be >= 1, found {per_class}")
    dest = Path(out).expanduser() if out is not None else None
    if dest is not None and dest.exists():
        if not dest.is_dir():
            raise NotADirectoryError(f"--out {dest} exists and is not a folder")
        if any(dest.iterdir()):
            if not overwrite:
                raise FileExistsError(f"--out {dest} is not empty; choose another folder or pass --overwrite")
            if not (dest / LABELS_CSV).is_file():
                raise FileExistsError(
                    f"--out {dest} is not empty and is not a sample folder (no {LABELS_CSV}); refusing to replace it"
                )
    images, labels, classes, skipped = _load_source(source, per_class, size, seed, strict)
    if skipped:
        info(summarize_bad(skipped, len(images) + len(skipped), source))
    if grid is not None:
        save_class_grid(grid, images, labels, classes, per_class=grid_per_class)
        info(
            f"wrote {grid} ({min(grid_per_class, per_class or grid_per_class)} per class, {len(classes)} classes)"
        )
    if dest is None:
        return None, len(images)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for i in tqdm(range(len(images)), desc="export", unit="img", disable=not progress):
            (tmp / image_name(i)).write_bytes(_png_bytes(np.ascontiguousarray(images[i].transpose(1, 2, 0))))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "class_index", "class_name"])
        for i, c in enumerate(labels.tolist()):
            w.writerow([image_name(i), int(c), classes[int(c)]])
        (tmp / LABELS_CSV).write_text(buf.getvalue())
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info(f"wrote {len(images):,} images in {len(classes):,} classes to {dest} (+ {LABELS_CSV})")
    return dest, len(images)
