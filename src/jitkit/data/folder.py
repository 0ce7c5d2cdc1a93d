"""Image folders: ImageNet layout (PATH/train/<class>), flat class folders (PATH/<class>), or one folder.

Classes are the sorted names of the class folders (a single folder of images is one class named after it).
Files are found recursively inside each class folder, following symlinks; extensions jpg/jpeg/png/webp/bmp
in any case; hidden files (``.*``, e.g. macOS ``._x.jpg``) are ignored.

Shape key: items are uint8 [3, S, S] (CHW) after the ADM center crop to S.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jitkit.data.crop import UnreadableImage, load_cropped
from jitkit.data.datasets import ImageDataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# folders up to this many images are checked (headers) at construction; larger ones only when decoded
CHECK_LIMIT = 50_000
SHOW_BAD = 3
SIZE_SAMPLE = 256  # image headers read to tell whether the images are much smaller than img_size


def info(msg: str) -> None:
    """One line of information for the user (stderr, so that stdout stays clean for results)."""
    print(msg, file=sys.stderr, flush=True)


def printable(name: str | os.PathLike) -> str:
    """A file name as it can be printed: itself, or its ``repr`` when it holds bytes that are not UTF-8 (the
    surrogate escapes of ``os.fsdecode``, which a UTF-8 stream cannot write)."""
    s = os.fspath(name)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return repr(s)
    return s


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _image_files(folder: Path) -> Iterator[str]:
    """Image files under ``folder``, walked recursively (symlinks followed, loops ignored, hidden folders
    skipped), folder by folder in sorted order."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield from (os.path.join(dirpath, f) for f in filenames if is_image_name(f))


def _walk_images(folder: Path) -> list[str]:
    """All image files under ``folder`` (see :func:`_image_files`), sorted."""
    return sorted(_image_files(folder))


def _has_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image file at any depth (the walk stops at the first one)."""
    return next(_image_files(folder), None) is not None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _top_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and is_image_name(p.name))


@dataclass
class FolderScan:
    """What was found under a data path."""

    root: Path  # the folder whose class folders (or images) are used
    layout: str  # "imagenet" | "flat" | "single"
    classes: list[str]
    files: list[str]
    labels: list[int]
    empty_classes: list[str] = field(default_factory=list)

    def describe(self, path: Path) -> str:
        n, c = len(self.files), len(self.classes)
        root = printable(self.root)
        what = {
            "imagenet": f"ImageNet layout: {root}",
            "flat": f"flat class folders: {root}",
            "single": f"single folder, one class: {root}",
        }[self.layout]
        return f"found {n:,} images in {c:,} class{'es' if c != 1 else ''} ({what})"


def _no_images_error(path: Path) -> FileNotFoundError:
    entries = sorted(os.listdir(path)) if path.is_dir() else []
    exts = ", ".join(IMG_EXTENSIONS)
    if not entries:
        return FileNotFoundError(
            f"no images in {path}: the folder is empty. Expected PATH/train/<class>/*, PATH/<class>/* or a "
            f"folder of images ({exts})"
        )
    shown = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
    return FileNotFoundError(
        f"no images in {path}: found {len(entries)} entries ({shown}) but no files with an image extension "
        f"({exts}, any case). Expected PATH/train/<class>/*, PATH/<class>/* or a folder of images"
    )


def _scan_classes(root: Path, layout: str) -> FolderScan | None:
    classes, files, labels, empty = [], [], [], []
    for d in _subdirs(root):
        imgs = _walk_images(d)
        if not imgs:
            empty.append(d.name)
            continue
        labels.extend([len(classes)] * len(imgs))
        classes.append(d.name)
        files.extend(imgs)
    if not classes:
        return None
    return FolderScan(root, layout, classes, files, labels, empty)


def scan_folder(path: str | Path, split: str = "train") -> FolderScan:
    """Detect the layout under ``path`` and list its images.

    * ImageNet layout: ``path/<split>/<class>/…`` (split ``train``; ``val`` for reference statistics);
    * flat: ``path/<class>/…``;
    * single: images directly in ``path`` (one class named after the folder).

    A folder with both loose images and class folders is ambiguous and raises ValueError.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data folder {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(
            f"data {path}: expected a folder of images (or 'shapes', 'swissroll-D', a prepared cache), "
            f"found a file"
        )
    split_dir = path / split
    if split_dir.is_dir():
        return _scan_dir(split_dir, "imagenet")
    if split != "train" and (path / "train").is_dir():
        raise FileNotFoundError(f"{path} has a train/ folder but no {split}/ folder")
    return _scan_dir(path, "flat")


def folder_classes(path: str | Path, split: str = "train") -> list[str]:
    """The class names :func:`scan_folder` would find under ``path``, without listing every image: the
    sorted class folders that hold at least one image, or ``[folder name]`` for one folder of images (one
    class). Cheap enough to decide a config before any image is read; errors as :func:`scan_folder`."""
    path = Path(path).expanduser()
    if not path.is_dir() or split != "train":
        return scan_folder(path, split).classes  # its errors name what is wrong (and other splits are rare)
    root = path / split if (path / split).is_dir() else path
    classes = [d.name for d in _subdirs(root) if _has_images(d)]
    with os.scandir(root) as it:
        loose = any(e.is_file() and is_image_name(e.name) for e in it)
    if classes and not loose:
        return classes
    if loose and not classes:
        return [root.resolve().name or "images"]
    return _scan_dir(root, "flat").classes  # mixed layout or no images: its error says which


def _scan_dir(path: Path, class_layout: str) -> FolderScan:
    loose = _top_images(path)
    scan = _scan_classes(path, class_layout)
    if loose and scan is not None:
        raise ValueError(
            f"mixed layout in {path}: {len(loose):,} images lie directly in it (e.g. {Path(loose[0]).name}) "
            f"and {len(scan.classes):,} folders hold images (e.g. {scan.classes[0]}/). Expected either class "
            f"folders only (PATH/<class>/*) or images only (one class); move the loose images into a class "
            f"folder or point data at one of the two"
        )
    if scan is not None:
        return scan
    if loose:
        return FolderScan(path, "single", [path.resolve().name or "images"], loose, [0] * len(loose))
    raise _no_images_error(path)


def summarize_bad(bad: list[tuple[str, str]], total: int, root: Path | str) -> str:
    """One warning line: how many unreadable files, and the first few with their reasons."""
    shown = "; ".join(f"{printable(os.path.relpath(p, root))} ({why})" for p, why in bad[:SHOW_BAD])
    more = f"; and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    return (
        f"warning: skipped {len(bad):,} unreadable image(s) of {total:,} in {printable(root)}: {shown}{more}"
    )


def _check_header(path: str) -> str | None:
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return "not an image" if "cannot identify image file" in msg else msg
    return None


def small_images_note(
    files: list[str], img_size: int, *, param: str = "img_size", sample: int = SIZE_SAMPLE
) -> str | None:
    """A note when most images are much smaller than ``img_size`` (shorter side below half of it), else None;
    ``param`` is the name of the parameter that set the size, for the advice.

    Reads the headers of up to ``sample`` files spread over the list (no decoding). Such images are upscaled
    by the center crop: the model then spends its compute on interpolated pixels.
    """
    from PIL import Image

    if not files:
        return None
    picks = sorted({int(k) for k in np.linspace(0, len(files) - 1, min(sample, len(files)))})
    sides = []
    for k in picks:
        try:
            with Image.open(files[k]) as im:
                sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - unreadable files are reported elsewhere
            continue
    small = [s for s in sides if 2 * s < img_size]
    if not sides or 2 * len(small) <= len(sides):
        return None
    median = int(np.median(sides))
    return (
        f"note: {len(small)} of {len(sides)} images looked at are much smaller than {param}={img_size} (median "
        f"shorter side {median}px); the center crop upscales them, which adds compute but no detail. A smaller "
        f"{param} (e.g. {max(8, 1 << (median.bit_length() - 1))}, with a model for that size) trains faster"
    )


class ImageFolderDataset(ImageDataset):
    """Images from a folder, decoded and ADM-center-cropped to ``img_size`` on access.

    ``check`` (default: when the folder has ≤ 50,000 images) opens every file's header at construction;
    unreadable files are dropped with one warning line (``strict=True``: an error listing them). Files that
    fail later, while decoding (e.g. truncated data), are replaced by the next readable image with a warning,
    so an epoch never dies because of one file (``strict=True``: the error is raised). That warning is printed
    once per process; a reader whose DataLoader workers are separate processes sets ``defer_skipped``, takes
    each worker's replaced files with :meth:`take_skipped` and reports them once in the main process with
    :meth:`report_skipped` (``jitkit.train.batching``).
    """

    def __init__(
        self,
        path: str | Path,
        img_size: int,
        *,
        split: str = "train",
        hflip: bool = False,
        strict: bool = False,
        check: bool | None = None,
        verbose: bool = True,
    ) -> None:
        scan = scan_folder(path, split)
        self.path = Path(path)
        self.root = scan.root
        self.layout = scan.layout
        self.classes = scan.classes
        self.img_size = int(img_size)
        self.hflip = hflip
        self.strict = strict
        self.verbose = verbose
        self.source = str(Path(path).resolve())
        files, labels = scan.files, scan.labels
        if verbose:
            info(scan.describe(self.path))
            if scan.empty_classes:
                info(
                    f"warning: ignored {len(scan.empty_classes)} folder(s) without images: "
                    + ", ".join(printable(c) for c in scan.empty_classes[:SHOW_BAD])
                    + (" …" if len(scan.empty_classes) > SHOW_BAD else "")
                )
        if check is None:
            check = len(files) <= CHECK_LIMIT
        self.bad: list[tuple[str, str]] = []
        if check:
            keep = []
            for i, f in enumerate(files):
                why = _check_header(f)
                if why is None:
                    keep.append(i)
                else:
                    self.bad.append((f, why))
            if self.bad:
                if strict:
                    raise UnreadableImage(
                        summarize_bad(self.bad, len(files), self.root).replace("warning: skipped", "found", 1)
                    )
                if verbose:
                    info(summarize_bad(self.bad, len(files), self.root))
                files = [files[i] for i in keep]
                labels = [labels[i] for i in keep]
                if not files:
                    raise FileNotFoundError(f"no readable images in {self.root}")
        # numpy arrays instead of Python lists: forked DataLoader workers then share them without copies
        self.files = np.array([os.fsencode(f) for f in files])
        self.targets = np.asarray(labels, dtype=np.int64)
        self._runtime_bad = 0  # files replaced while decoding, in this process
        self.defer_skipped = (
            False  # True: keep them for take_skipped() instead of printing (see the docstring)
        )
        self._skipped: list[tuple[str, str]] = []
        self._reported = 0  # files replaced in any process, as counted by report_skipped()
        if verbose:
            note = small_images_note(files, self.img_size)
            if note:
                info(note)

    def __len__(self) -> int:
        return len(self.files)

    def path_of(self, i: int) -> str:
        return os.fsdecode(self.files[i])

    def load(self, i: int) -> np.ndarray:
        """Decode and crop image ``i``: uint8 [3, S, S]; raises UnreadableImage."""
        return load_cropped(self.path_of(i), self.img_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        for k in range(min(n, 64)):
            j = (int(i) + k) % n
            try:
                arr = self.load(j)
            except UnreadableImage as e:
                if self.strict:
                    raise UnreadableImage(f"unreadable image {printable(self.path_of(j))}: {e}") from e
                self._runtime_bad += 1
                if self.defer_skipped:
                    self._skipped.append((self.path_of(j), str(e)))
                elif self._runtime_bad == 1:
                    self._warn_skipped(self.path_of(j), str(e))
                continue
            return self._maybe_flip(torch.from_numpy(arr)), int(self.targets[j])
        raise UnreadableImage(
            f"64 consecutive unreadable images from {printable(self.path_of(i))} in {printable(self.root)}"
        )

    def _warn_skipped(self, path: str, why: str) -> None:
        if self.verbose:
            info(
                f"warning: skipped unreadable image {printable(path)} ({why}); using the next one in its place "
                f"(further ones are not reported; run `jitkit prepare` to list them all)"
            )

    def take_skipped(self) -> list[tuple[str, str]]:
        """The (file, reason) of the images replaced in this process since the last call (``defer_skipped``)."""
        out, self._skipped = self._skipped, []
        return out

    def report_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """Count files replaced in any process (from :meth:`take_skipped`); the first one is reported once."""
        if not skipped:
            return
        first = self._reported == 0
        self._reported += len(skipped)
        if first:
            self._warn_skipped(*skipped[0])


def resume_prepare(
    out: Path,
    plan_id: str,
    overwrite: bool,
    *,
    manifest: str,
    partial: str,
    kind: str,
    remove: Callable[[Path], None],
) -> tuple[bool, dict | None]:
    """Where a resumable ``prepare`` into ``out`` stands: ``(finished, partial_state)``.

    ``out/manifest`` of the same ``plan_id`` → ``(True, None)``: nothing to do. ``out/partial`` of the same
    plan → ``(False, its dict)``: continue it. No ``out`` or an empty one → ``(False, None)``. Anything else is
    refused unless ``overwrite`` (then ``remove(out)`` clears the earlier files); a folder holding neither
    file is never cleared. ``kind`` names what is prepared ("cache", "shards") in the messages.
    """
    import json

    if not out.exists():
        return False, None
    if not out.is_dir():
        raise NotADirectoryError(f"out {out} exists and is not a folder")
    man_p, part_p = out / manifest, out / partial
    if man_p.exists():
        man = json.loads(man_p.read_text())
        if man.get("plan_id") == plan_id and not overwrite:
            info(
                f"{out} already holds this {kind} ({man['count']:,} images at {man.get('size')}px); nothing to do"
            )
            return True, None
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds prepared data ({man.get('format', 'cache')}) of {man.get('source')} at "
                f"{man.get('size')}px; choose another out folder or set overwrite=True"
            )
        remove(out)
        return False, None
    if part_p.exists():
        st = json.loads(part_p.read_text())
        if st.get("plan_id") == plan_id and not overwrite:
            return False, st
        if not overwrite:
            at = f" at {st['size']}px" if st.get("size") else ""
            raise FileExistsError(
                f"{out} holds an unfinished prepare of {st.get('source')}{at} (other settings, or a folder whose "
                "files changed since); set overwrite=True to start again"
            )
        remove(out)
        return False, None
    if any(out.iterdir()):
        raise FileExistsError(f"out {out} is a non-empty folder that is not a jitkit {kind}; choose another")
    return False, None
