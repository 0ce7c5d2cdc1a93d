"""The sample-folder format and its siblings, the only reader and writer of them (DESIGN, Formats).

Sample folder: flat ``00000.png …`` plus ``labels.csv`` (``file,class_index,class_name``), written once the
folder is complete, and ``sample_meta.json`` (what was asked for, to refuse mixing two requests). Each PNG is
written atomically, so a file that exists is complete and re-running skips it.
npz: ``arr_0`` uint8 [N, S, S, 3] (the layout of the ADM evaluation suite) and ``arr_1`` int64 labels [N].

Rank splitting: with W processes, rank r makes the images i ≡ r (mod W) of the plan; the union over ranks is
every index exactly once. npz and grid outputs need all images in one place: each rank writes its share
beside the target as ``.NAME.part-R-of-W.npz`` and rank 0 merges them after a barrier.

A job's labels are a :class:`jitkit.eval.sample_plan.LabelPlan` (computed per index, never an array of N)
and its images are made in chunks, so the memory of a folder job does not depend on its size.

Shape key: N images, C channels, S side.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.generate import generate_images, image_shape
from jitkit.eval.sample_plan import LabelPlan, check_outputs_fit
from jitkit.fileio import atomic_write_bytes, atomic_write_with
from jitkit.images import png_bytes, save_grid, to_hwc
from jitkit.runtime import dist

__all__ = [
    "check_replaceable",
    "write_sample_folder",
    "IMAGE_EXTS",
    "LABELS_CSV",
    "META_JSON",
    "LabelPlan",
    "SampleFolder",
    "image_name",
    "rank_range",
    "list_images",
    "load_images",
    "load_npz",
    "read_image",
    "read_labels_csv",
    "read_sample_folder",
    "sample_to_outputs",
    "save_npz",
    "write_labels_csv",
]

LABELS_CSV = "labels.csv"
META_JSON = "sample_meta.json"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what a folder of images may hold
CHUNK_BYTES = 64 << 20  # uint8 pixels generated per chunk: a job's memory does not grow with its size


# -- npz -------------------------------------------------------------------------------------------------


def save_npz(path: str | Path, images: Any, labels: Any, classes: Sequence[str] | None = None) -> Path:
    """uint8 images and int64 labels as ``arr_0`` [N, S, S, 3] and ``arr_1`` [N] (+ ``classes``), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"an npz output needs a .npz file name, found {str(path)!r}")
    a = to_hwc(images)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    if len(y) != len(a):
        raise ValueError(f"{len(a)} images but {len(y)} labels")
    extra = {"classes": np.asarray(list(classes), dtype=str)} if classes is not None else {}
    atomic_write_with(path, lambda f: np.savez(f, arr_0=a, arr_1=y, **extra))  # straight to the file
    return path


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """(images uint8 [N, 3, S, S], labels [N] or None, classes or None) from a jitkit/ADM-style npz.

    Accepts ``arr_0`` or ``images`` in NHWC or NCHW layout.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        key = "arr_0" if "arr_0" in z.files else ("images" if "images" in z.files else None)
        if key is None:
            raise ValueError(
                f"{path}: expected an array 'arr_0' (or 'images') of uint8 images, found {z.files}"
            )
        a = z[key]
        y = z["arr_1"] if "arr_1" in z.files else (z["labels"] if "labels" in z.files else None)
        classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    if a.ndim != 4 or a.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images [N, S, S, 3], found {a.dtype} {list(a.shape)}")
    if a.shape[-1] == 3 and a.shape[1] != 3:
        a = a.transpose(0, 3, 1, 2)
    elif a.shape[1] != 3:
        raise ValueError(f"{path}: expected images with 3 channels, found shape {list(a.shape)}")
    return np.ascontiguousarray(a), (None if y is None else np.asarray(y, dtype=np.int64)), classes


# -- sample folders --------------------------------------------------------------------------------------


def image_name(i: int) -> str:
    """The file name of image ``i`` of a sample folder: ``00000.png``."""
    return f"{i:05d}.png"


class SampleFolder:
    """A sample folder being written: flat ``00000.png …``, ``labels.csv``, ``sample_meta.json``.

    Each PNG is written atomically (temp + fsync + rename), so a file that exists is complete; re-running
    skips them. ``meta`` records the request (checkpoint, sampler, seed, the number of images and a digest of
    their labels); resuming with a different request is refused rather than mixing two runs in one folder.
    ``labels``: an array (or tensor) of labels, or a :class:`LabelPlan`. Nothing here holds N of anything:
    the folder is listed once, the todo list is an iterator and labels.csv is written row by row.
    """

    def __init__(
        self,
        root: str | Path,
        labels: Sequence[int] | np.ndarray | torch.Tensor | LabelPlan,
        classes: Sequence[str],
        meta: dict | None = None,
    ):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"a sample folder is a folder, found a file: {self.root}")
        self.plan = labels if isinstance(labels, LabelPlan) else LabelPlan.of(labels)
        self.classes = list(classes)
        self.meta = dict(meta or {})
        self.meta["num_images"] = len(self.plan)
        self.meta["labels_plan"] = self.plan.digest()

    @property
    def labels(self) -> np.ndarray:
        """All labels [N] (an array of N: for small plans)."""
        return self.plan.array()

    def check_or_write_meta(self) -> None:
        """Refuse a folder that holds another request's images; otherwise record this request."""
        p = self.root / META_JSON
        if p.exists():
            try:
                old = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{p} is not valid JSON ({e}); delete it or choose another folder") from e
            diff = {k: (old.get(k), v) for k, v in self.meta.items() if old.get(k) != v}
            if "labels_plan" in diff and "labels_plan" not in old and "labels_sha" in old:
                # begun by an older jitkit, which hashed the label array: compare that way, once
                if old["labels_sha"] == _legacy_labels_sha(self.plan):
                    del diff["labels_plan"]
            if diff:
                lines = "; ".join(f"{k}: folder has {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"{self.root} already holds samples of a different request ({lines}); "
                    "use the same options to resume, or choose another folder"
                )
            return
        if not self.existing() and next(self.root.glob("*.png"), None) is not None:
            raise ValueError(
                f"{self.root} already contains PNG files that are not a jitkit sample folder; choose another folder"
            )
        atomic_write_bytes(p, (json.dumps(self.meta, indent=2, sort_keys=True) + "\n").encode())

    def existing_indices(self) -> np.ndarray:
        """Sorted plan indices [K] whose PNG is already in the folder: one listing of the folder, 8 bytes per
        image found (what a resumed job holds; a new folder costs nothing)."""
        if not self.root.is_dir():
            return np.zeros(0, dtype=np.int64)
        n, found = len(self.plan), array("q")
        with os.scandir(self.root) as it:
            for e in it:
                stem = e.name[:-4]
                if (
                    e.name.endswith(".png")
                    and stem.isdigit()
                    and int(stem) < n
                    and image_name(int(stem)) == e.name
                ):
                    if e.is_file():
                        found.append(int(stem))
        return np.sort(np.frombuffer(found, dtype=np.int64)) if found else np.zeros(0, dtype=np.int64)

    def existing(self) -> set[int]:
        """Plan indices whose PNG is already in the folder."""
        return set(self.existing_indices().tolist())

    def todo(
        self, rank: int = 0, world_size: int = 1, chunk: int = 1 << 16, have: np.ndarray | None = None
    ) -> Iterator[np.ndarray]:
        """This rank's share of the plan minus what is already written, as arrays of at most ``chunk`` plan
        indices, lazily (``have``: :meth:`existing_indices`, listed once)."""
        have = self.existing_indices() if have is None else have
        mine = rank_range(len(self.plan), rank, world_size)
        for s in range(0, len(mine), chunk):
            r = mine[s : s + chunk]
            idx = np.arange(r.start, r.stop, r.step, dtype=np.int64)
            pos = np.minimum(np.searchsorted(have, idx), max(len(have) - 1, 0))
            left = idx[have[pos] != idx] if len(have) else idx
            if len(left):
                yield left

    def write(self, indices: Iterable[int], images: Any) -> None:
        """Write uint8 ``images`` [B, C, S, S] as the PNGs of plan ``indices``, each atomically."""
        a = to_hwc(images)
        for i, img in zip(indices, a):
            atomic_write_bytes(self.root / image_name(int(i)), png_bytes(img))

    def complete(self) -> bool:
        """Whether every image of the plan is in the folder."""
        return len(self.existing()) == len(self.plan)

    def finish(self) -> bool:
        """Write labels.csv when every image of the plan is present; returns whether it did."""
        if not self.complete():
            return False
        write_labels_csv(self.root, self.plan, self.classes)
        return True


def rank_range(n: int, rank: int, world_size: int) -> range:
    """The plan indices rank ``rank`` of ``world_size`` makes, i ≡ rank (mod world_size), as a range."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), found rank={rank}, world_size={world_size}")
    return range(rank, n, world_size)


def _legacy_labels_sha(plan: LabelPlan) -> str:
    """The label digest of sample_meta.json before LabelPlan (sha256 of the int64 array), computed in pieces."""
    h = hashlib.sha256()
    for _, y in plan.chunks():
        h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def write_labels_csv(root: str | Path, labels: Any, classes: Sequence[str]) -> Path:
    """``labels.csv`` with ``file,class_index,class_name`` for images 0 … N−1 (atomic; written row by row,
    ``labels`` an array or a :class:`LabelPlan`)."""
    plan = labels if isinstance(labels, LabelPlan) else LabelPlan.of(labels)
    names = [_csv_name(c) for c in classes]

    def write(f: Any) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=False)
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["file", "class_index", "class_name"])
        for start, y in plan.chunks(1 << 16):
            w.writerows(
                [image_name(start + k), c, names[c] if 0 <= c < len(names) else str(c)]
                for k, c in enumerate(y.tolist())
            )
        text.flush()
        text.detach()  # leave the file to atomic_write_with, which fsyncs and closes it

    path = Path(root) / LABELS_CSV
    atomic_write_with(path, write)
    return path


def _csv_name(name: Any) -> str:
    """A class name as UTF-8 text can hold it (a folder name with bytes that are not UTF-8: escaped)."""
    return str(name).encode("utf-8", "backslashreplace").decode("utf-8")


def check_replaceable(dest: str | Path, overwrite: bool = False) -> None:
    """Raise unless ``dest`` may receive a new sample folder: absent, empty, or (with ``overwrite``) a sample
    folder (one with labels.csv) — never another kind of folder, whose files would be lost."""
    dest = Path(dest)
    if not dest.exists():
        return
    if not dest.is_dir():
        raise NotADirectoryError(f"{dest} exists and is not a folder; expected a folder for the samples")
    if any(dest.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{dest} is not empty; choose another folder or allow replacing it with overwrite=True"
            )
        if not (dest / LABELS_CSV).is_file():
            raise FileExistsError(
                f"{dest} is not empty and is not a sample folder (no {LABELS_CSV}); refusing to replace it"
            )


def write_sample_folder(
    dest: str | Path,
    images: Any,
    labels: Any,
    classes: Sequence[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write images [N, 3, S, S] and their labels as a complete sample folder, atomically.

    The folder is written beside ``dest`` and renamed into place at the end (a replaced sample folder is
    removed only after that), so an interrupted write leaves no half folder. See :func:`check_replaceable`.
    """
    import os
    import shutil

    from tqdm.auto import tqdm

    dest = Path(dest)
    check_replaceable(dest, overwrite)
    a = to_hwc(images)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) != len(a):
        raise ValueError(f"{len(a)} images but {len(y)} labels")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for i in tqdm(range(len(a)), desc="export", unit="img", disable=not progress):
            (tmp / image_name(i)).write_bytes(png_bytes(a[i]))
        write_labels_csv(tmp, y, classes)
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
    return dest


def read_labels_csv(root: str | Path) -> tuple[list[Path], np.ndarray] | None:
    """The files ``ROOT/labels.csv`` lists, in its order, and their class indices (None without the file).

    The one reader of labels.csv: checks the columns and that every listed file exists.
    """
    root = Path(root)
    csv_path = root / LABELS_CSV
    if not csv_path.is_file():
        return None
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        rows, lines = [], []
        for r in reader:
            rows.append(r)
            lines.append(reader.line_num)
    if rows and not {"file", "class_index"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: expected columns file,class_index,class_name, found {list(rows[0])}")
    files = [root / (r["file"] or "") for r in rows]
    labels = np.zeros(len(rows), dtype=np.int64)
    for k, r in enumerate(rows):
        v = r["class_index"]
        try:
            labels[k] = int(v)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"{csv_path}, line {lines[k]} ({r['file']}): class_index must be an integer, found {v!r}; fix the "
                f"row, or re-run the jitkit sample command that wrote the folder"
            ) from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{csv_path} lists {len(missing)} file(s) that are missing, e.g. {missing[:3]}; "
            "was sampling interrupted? re-run the same jitkit sample command to finish it"
        )
    return files, labels


def read_image(path: str | Path) -> np.ndarray:
    """One image file (PNG, JPEG, …) as uint8 [3, S, S] RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()


def list_images(
    root: str | Path, *, exts: Sequence[str] = (".png",), with_labels: bool = True
) -> tuple[list[Path], np.ndarray | None]:
    """(files, labels or None) of a flat folder: labels.csv's list when it exists (and ``with_labels``),
    else every file with one of ``exts`` (sorted, hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"expected a sample folder (image files + labels.csv), found {root}")
    listed = read_labels_csv(root) if with_labels else None
    if listed is not None:
        return listed
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in exts and not p.name.startswith("."))
    return files, None


def read_sample_folder(root: str | Path, *, with_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a sample folder → (uint8 images [N, 3, S, S], labels [N] or None).

    With ``labels.csv`` the files it lists are read in its order; without it every ``*.png`` (sorted).
    """
    files, labels = list_images(root, with_labels=with_labels)
    if not files:
        raise ValueError(f"{root}: no PNG images found")
    arrs = [read_image(f) for f in files]
    sizes = {a.shape for a in arrs}
    if len(sizes) > 1:
        raise ValueError(f"{root}: images have different sizes {sorted(sizes)[:3]}; expected one size")
    return np.stack(arrs), labels


def load_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and labels from a sample folder or an npz file (see ``read_sample_folder``, ``load_npz``)."""
    p = Path(path)
    if p.is_dir():
        return read_sample_folder(p)
    if p.suffix.lower() == ".npz":
        a, y, _ = load_npz(p)
        return a, y
    if not p.exists():
        raise FileNotFoundError(f"not found: {p} (expected a sample folder or an .npz file)")
    raise ValueError(f"expected a sample folder or an .npz file, found {p}")


# -- the whole job ---------------------------------------------------------------------------------------


def sample_to_outputs(
    denoiser: torch.nn.Module,
    labels: np.ndarray | torch.Tensor | LabelPlan,
    sampler_cfg: SamplerConfig,
    classes: Sequence[str],
    *,
    seed: int = 0,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    npz: str | Path | None = None,
    grid: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    precision: str = "auto",
    meta: dict | None = None,
    noise: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Generate ``labels`` (an array or a :class:`LabelPlan`) into any of a sample folder, an npz file and a
    grid PNG, split over ranks. ``noise`` [N, C, S, S]: each image's starting noise instead of the seeded one
    (see :func:`jitkit.diffusion.generate.generate_images`).

    The folder is resumable (existing images are skipped) and gets ``labels.csv`` when complete. Images are
    made in chunks of about ``CHUNK_BYTES`` of pixels, so a folder job's memory does not grow with its size;
    npz and grid need all images in one process, and are refused before any work when they cannot fit
    (:func:`check_outputs_fit`). With world_size > 1 each rank writes its share next to the npz/grid path as
    ``.part-R-of-W.npz`` and rank 0 (after a barrier) merges them; ranks that are simulated in sequence
    (no process group) merge when the last part arrives. Returns a summary dict.
    """
    if out_dir is None and npz is None and grid is None:
        raise ValueError("choose an output: grid (a .png file), out_dir (a folder) or npz (a .npz file)")
    # check the outputs before spending time on sampling
    if grid is not None and Path(grid).suffix.lower() != ".png":
        raise ValueError(f"a grid is written as a .png file, found the name {str(grid)!r}")
    if npz is not None and Path(npz).suffix.lower() != ".npz":
        raise ValueError(f"an npz output needs a .npz file name, found {str(npz)!r}")
    for f in (grid, npz):
        if f is not None and Path(f).is_dir():
            raise IsADirectoryError(f"{f} is a folder; expected a file name")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    plan = labels if isinstance(labels, LabelPlan) else LabelPlan.of(labels)
    n, shape = len(plan), image_shape(denoiser)
    check_outputs_fit(plan, shape, npz=npz, grid=grid)
    summary: dict[str, Any] = {"num_images": n, "rank": rank, "world_size": world_size}
    mine = rank_range(n, rank, world_size)
    folder = None
    if out_dir is not None:
        folder = SampleFolder(out_dir, plan, classes, meta)
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.check_or_write_meta()
    need_all = npz is not None or grid is not None
    # with a folder, its finished images are skipped (and reused for the npz/grid)
    have = folder.existing_indices() if folder is not None else np.zeros(0, dtype=np.int64)
    have_mine = have[have % world_size == rank]
    summary["skipped"] = len(have_mine)
    total = len(mine) - len(have_mine)
    part = np.empty((len(mine), *shape), dtype=np.uint8) if need_all else None  # [n_mine, C, S, S]

    def on_batch(bidx: list[int], imgs: torch.Tensor, _y: np.ndarray) -> None:
        if folder is not None:
            folder.write(bidx, imgs)
        if part is not None:
            part[[(i - rank) // world_size for i in bidx]] = imgs.numpy()
        if bar is not None:
            bar.update(len(bidx))

    chunk = max(1, CHUNK_BYTES // (int(np.prod(shape)) * batch_size)) * batch_size
    one_call = total <= chunk  # the common case: generate_images' own bar, with progress inside a batch
    bar = None if one_call else _progress_bar(total, progress, rank, world_size)
    chunks = (
        folder.todo(rank, world_size, chunk, have)
        if folder is not None
        else (
            np.arange(r.start, r.stop, r.step)
            for r in (mine[s : s + chunk] for s in range(0, len(mine), chunk))
        )
    )
    try:
        for idx in chunks:
            generate_images(
                denoiser,
                plan.labels(idx),
                sampler_cfg,
                seed=seed,
                batch_size=batch_size,
                progress=progress and one_call,
                indices=idx.tolist(),
                on_batch=on_batch,
                precision=precision,
                desc=_desc(rank, world_size),
                noise=noise,
            )
    finally:
        if bar is not None:
            bar.close()
    summary["generated"] = total

    if folder is not None:
        dist.barrier()
        if rank == 0 or not dist.is_initialized():
            summary["complete"] = folder.finish()
        summary["out"] = str(folder.root)

    if need_all:
        for i in have_mine.tolist():  # made by an earlier run: read back from the folder
            part[(i - rank) // world_size] = read_image(folder.root / image_name(i))
        target = Path(npz) if npz is not None else Path(grid)
        images = _gather_parts(target, part, mine, n, rank, world_size)
        if images is not None:
            y = plan.array()
            if npz is not None:
                save_npz(npz, images, y, classes)
                summary["npz"] = str(npz)
            if grid is not None:
                save_grid(images, y, grid, classes)
                summary["grid"] = str(grid)
    return summary


def _desc(rank: int, world_size: int) -> str:
    return f"sampling (rank {rank}/{world_size})" if world_size > 1 else "sampling"


def _progress_bar(total: int, enabled: bool, rank: int, world_size: int) -> Any:
    """A bar over a job of several chunks (updated per batch; a one-chunk job uses generate_images' own)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, disable=not enabled, desc=_desc(rank, world_size), unit="img", dynamic_ncols=True
    )


def _part_path(target: Path, rank: int, world_size: int) -> Path:
    return target.with_name(f".{target.name}.part-{rank}-of-{world_size}.npz")


def _gather_parts(
    target: Path, part: np.ndarray, mine: range, n: int, rank: int, world_size: int
) -> np.ndarray | None:
    """All N images in plan order on the merging rank (None elsewhere)."""
    if world_size == 1:
        return part
    atomic_write_with(
        _part_path(target, rank, world_size), lambda f: np.savez(f, images=part, indices=np.asarray(mine))
    )
    dist.barrier()
    if dist.is_initialized() and rank != 0:
        return None
    parts = [_part_path(target, r, world_size) for r in range(world_size)]
    if not all(p.is_file() for p in parts):
        return None  # simulated ranks: a later rank merges
    images = None
    for p in parts:
        with np.load(p) as z:
            idx, imgs = z["indices"], z["images"]
        if len(idx) == 0:
            continue
        if images is None:
            images = np.zeros((n, *imgs.shape[1:]), dtype=np.uint8)
        images[idx] = imgs
    for p in parts:
        p.unlink(missing_ok=True)
    return images
