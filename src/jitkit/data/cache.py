"""The prepared cache: center-cropped uint8 images in one memory-mapped file (no JPEG decode per step).

Layout of CACHE/ (written by ``jitkit prepare``):
  images.u8      raw uint8 [N, 3, S, S] (C order)
  labels.npy     int64 [N]
  classes.json   class names, index → name
  sources.txt    the source file of each row (relative to the source root), one per line, as the bytes of
                 its name (not always UTF-8)
  manifest.json  {format, version, source, root, layout, split, size, count, num_classes, checksum
                  (sha256 of images.u8 then labels), sample_checksum, skipped, plan_id, jitkit}
  prepare-state.json   only while preparing: done chunks and skipped files, so an interrupted prepare resumes

manifest.json is written last (atomically): a cache without it is unfinished. Opening a cache checks
sizes, count and labels always, the sample checksum (64 rows spread over the file) always, and the full
checksum when images.u8 is at most 1 GiB (or ``verify="full"``); any mismatch is refused with a message
to re-run prepare.

Shape key: N images, S side; images [N, 3, S, S] uint8.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from jitkit.data.crop import UnreadableImage, load_cropped
from jitkit.data.datasets import InMemoryDataset
from jitkit.data.folder import info, resume_prepare, scan_folder, small_images_note, summarize_bad
from jitkit.fileio import atomic_write_bytes, atomic_write_with

FORMAT = "jitkit-cache"
VERSION = 1
MANIFEST = "manifest.json"
STATE = "prepare-state.json"
IMAGES = "images.u8"
FULL_VERIFY_BYTES = 1 << 30
SAMPLE_ROWS = 64


class CacheMismatch(ValueError):
    """A cache whose files do not match its manifest."""


# --- small I/O helpers ---------------------------------------------------------------------------------


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write_with(path, lambda f: np.save(f, arr))


def _row_bytes(size: int) -> int:
    return 3 * size * size


def _plan_id(source: str, split: str, size: int, rel_files: list[str], labels: list[int], classes) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, VERSION, source, split, size, classes]).encode())
    for f, y in zip(rel_files, labels):
        h.update(os.fsencode(f) + f"\t{y}\n".encode())  # a file name's own bytes, UTF-8 or not
    return h.hexdigest()


def _file_checksum(images: Path, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    with open(images, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def _sample_rows(count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, min(count, SAMPLE_ROWS)).round().astype(np.int64))


def _sample_checksum(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(images.shape), classes]).encode())
    for r in _sample_rows(images.shape[0]):
        h.update(np.ascontiguousarray(images[r]).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


# --- prepare -------------------------------------------------------------------------------------------


def _prepare_chunk(images_path: str, count: int, size: int, start: int, paths: list[str]) -> list:
    """Worker: decode + crop ``paths`` into rows start… of the memmap; returns [(row, path, reason)] bad."""
    mm = np.memmap(images_path, dtype=np.uint8, mode="r+", shape=(count, 3, size, size))
    bad = []
    for k, p in enumerate(paths):
        try:
            mm[start + k] = load_cropped(p, size)
        except UnreadableImage as e:
            mm[start + k] = 0
            bad.append((start + k, p, str(e)))
    mm.flush()
    del mm
    return bad


def prepare_workers(requested: int = -1) -> int:
    """Processes for decoding: all CPUs this process may use, capped by memory (≈ 400 MB per worker, half
    of the free memory)."""
    from jitkit.data.loader import cpu_count
    from jitkit.runtime.memory import host_available_memory

    if requested and requested > 0:
        return int(requested)
    mem = host_available_memory() or (4 << 30)
    return max(1, min(cpu_count(), int(0.5 * mem // (400 << 20)), 32))


def prepare_cache(
    data: str | Path,
    size: int,
    out: str | Path,
    *,
    split: str = "train",
    workers: int = -1,
    strict: bool = False,
    overwrite: bool = False,
    chunk: int = 64,
    progress: bool = True,
) -> Path:
    """Decode and ADM-center-crop every image of the folder ``data`` into a cache at ``out``.

    Runs in a process pool (``workers``; −1 sizes it from CPUs and memory) with a progress bar, saves
    its progress after every chunk so that re-running the same command after an interruption resumes,
    skips unreadable files (one warning line; ``strict``: an error), and writes manifest.json last.
    """
    from tqdm import tqdm

    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, found {size}")
    data = Path(data).expanduser()
    out = Path(out).expanduser()
    if is_cache(data):
        raise ValueError(f"data {data} is already a prepared cache; give the source image folder instead")
    scan = scan_folder(data, split)
    info(scan.describe(data))
    note = small_images_note(scan.files, size, param="size")
    if note:
        info(note)
    source = str(data.resolve())
    root = scan.root.resolve()
    rel = [os.path.relpath(f, scan.root) for f in scan.files]
    plan_id = _plan_id(source, split, size, rel, scan.labels, scan.classes)
    count = len(scan.files)
    rowb = _row_bytes(size)

    finished, state = resume_prepare(
        out, plan_id, overwrite, manifest=MANIFEST, partial=STATE, kind="cache", remove=_remove_cache_files
    )
    if finished:
        return out
    out.mkdir(parents=True, exist_ok=True)

    images_p = out / IMAGES
    if state is None or not images_p.exists() or images_p.stat().st_size != count * rowb:
        with open(images_p, "wb") as f:
            f.truncate(count * rowb)
        state = {
            "plan_id": plan_id,
            "source": source,
            "size": size,
            "split": split,
            "count": count,
            "chunk": chunk,
            "done": [],
            "bad": [],
        }
        _write_json(out / STATE, state)
    else:
        chunk = int(state["chunk"])
        info(f"resuming: {len(state['done']):,} of {-(-count // chunk):,} chunks already done")

    n_chunks = -(-count // chunk)
    done = set(state["done"])
    todo = [c for c in range(n_chunks) if c not in done]
    bad: list = [tuple(b) for b in state["bad"]]
    nproc = min(prepare_workers(workers), max(1, len(todo)))

    def finish_chunk(c: int, chunk_bad: list) -> None:
        done.add(c)
        bad.extend(tuple(b) for b in chunk_bad)
        state["done"] = sorted(done)
        state["bad"] = [list(b) for b in bad]
        _write_json(out / STATE, state)
        if strict and chunk_bad:
            raise UnreadableImage(
                summarize_bad([(p, why) for _, p, why in bad], count, root).replace(
                    "warning: skipped", "found", 1
                )
                + "; fix or remove them and re-run with overwrite=True, or with strict=False to skip them"
            )

    def args_of(c: int):
        lo, hi = c * chunk, min(count, (c + 1) * chunk)
        return str(images_p), count, size, lo, scan.files[lo:hi]

    bar = tqdm(
        total=count,
        initial=sum(min(count, (c + 1) * chunk) - c * chunk for c in done),
        unit="img",
        desc=f"prepare {size}px",
        disable=not progress,
        dynamic_ncols=True,
    )
    t0 = time.time()
    try:
        if nproc <= 1:
            for c in todo:
                a = args_of(c)
                finish_chunk(c, _prepare_chunk(*a))
                bar.update(len(a[-1]))
        else:
            import multiprocessing as mp
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            # workers only run PIL/numpy: fork is safe on Linux (and works from notebooks and unguarded
            # scripts); elsewhere spawn, the platform default
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            ex = ProcessPoolExecutor(max_workers=nproc, mp_context=ctx)
            try:
                pending = {}
                it = iter(todo)
                for c in it:  # keep at most 2 chunks per worker in flight
                    pending[ex.submit(_prepare_chunk, *args_of(c))] = c
                    if len(pending) >= 2 * nproc:
                        break
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        c = pending.pop(fut)
                        finish_chunk(c, fut.result())
                        bar.update(min(count, (c + 1) * chunk) - c * chunk)
                        nxt = next(it, None)
                        if nxt is not None:
                            pending[ex.submit(_prepare_chunk, *args_of(nxt))] = nxt
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    elapsed = time.time() - t0

    labels = np.asarray(scan.labels, dtype=np.int64)
    keep = np.ones(count, dtype=bool)
    for row, _, _ in bad:
        keep[int(row)] = False
    if bad:
        info(summarize_bad([(p, why) for _, p, why in bad], count, root))
        _compact(images_p, count, rowb, keep)
    labels = labels[keep]
    rel_kept = [r for r, k in zip(rel, keep) if k]
    n = int(keep.sum())
    if n == 0:
        raise FileNotFoundError(f"no readable images in {root}")

    _save_npy(out / "labels.npy", labels)
    atomic_write_bytes(out / "classes.json", (json.dumps(scan.classes, indent=1) + "\n").encode())
    atomic_write_bytes(out / "sources.txt", b"".join(os.fsencode(r) + b"\n" for r in rel_kept))
    with open(images_p, "rb+") as f:
        os.fsync(f.fileno())
    mm = np.memmap(images_p, dtype=np.uint8, mode="r", shape=(n, 3, size, size))
    from jitkit import __version__

    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "root": str(root),
        "layout": scan.layout,
        "split": split,
        "size": size,
        "count": n,
        "num_classes": len(scan.classes),
        "checksum": _file_checksum(images_p, labels),
        "sample_checksum": _sample_checksum(mm, labels, scan.classes),
        "skipped": [[os.path.relpath(p, root), why] for _, p, why in bad],
        "plan_id": plan_id,
        "jitkit": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    del mm
    _write_json(out / MANIFEST, manifest)
    (out / STATE).unlink(missing_ok=True)
    processed = sum(min(count, (c + 1) * chunk) - c * chunk for c in todo)
    rate = processed / max(elapsed, 1e-9)
    info(
        f"wrote {n:,} images ({n * rowb / (1 << 30):.2f} GiB) in {len(scan.classes):,} classes to {out} "
        f"({elapsed:.1f} s, {rate:.0f} img/s with {nproc} process(es))"
    )
    return out


def _compact(images_p: Path, count: int, rowb: int, keep: np.ndarray) -> None:
    """Move the kept rows down over the skipped ones (in place, in blocks) and truncate the file."""
    with open(images_p, "r+b") as f:
        dst = 0
        src = 0
        while src < count:
            if not keep[src]:
                src += 1
                continue
            run = src
            while run < count and keep[run] and run - src < 1024:
                run += 1
            if dst != src:
                f.seek(src * rowb)
                block = f.read((run - src) * rowb)
                f.seek(dst * rowb)
                f.write(block)
            dst += run - src
            src = run
        f.truncate(dst * rowb)
        f.flush()
        os.fsync(f.fileno())


def _remove_cache_files(out: Path) -> None:
    for name in (MANIFEST, STATE, IMAGES, "labels.npy", "classes.json", "sources.txt"):
        (out / name).unlink(missing_ok=True)


# --- open ----------------------------------------------------------------------------------------------


def is_cache(path: str | Path) -> bool:
    """A folder with a cache manifest (or an unfinished prepare)."""
    p = Path(path)
    return p.is_dir() and ((p / MANIFEST).is_file() or (p / STATE).is_file())


def _rerun(man: dict, path: Path) -> str:
    return (
        f"re-run `jitkit prepare --data {man.get('source', 'SOURCE')} --size {man.get('size', 'S')} "
        f"--out {path} --overwrite`"
    )


class CacheDataset(InMemoryDataset):
    """A prepared cache, memory-mapped: ``.images`` uint8 [N, 3, S, S] (pages load on access), ``.labels``,
    ``.classes``, ``.manifest``. ``read_rows`` reads a batch with plain file reads (what streaming DataLoader
    workers use). Pickles (for spawned DataLoader workers) by path, not by content."""

    memory_mapped = True

    def __init__(self, path: str | Path, verify: str = "auto", hflip: bool = False) -> None:
        self.path = Path(path)
        man, images, labels, classes = _open_checked(self.path, verify)
        super().__init__(images, labels, classes, hflip=hflip, source=man["source"])
        self.manifest = man
        self._reader: tuple[int, BinaryIO] | None = None  # (pid, images.u8 opened by that process)

    def __getstate__(self):
        return {"path": str(self.path), "hflip": self.hflip}

    def __setstate__(self, st):
        self.__init__(st["path"], verify="none", hflip=st["hflip"])

    def _file(self) -> BinaryIO:
        """images.u8 opened by this process (a forked worker opens its own: no file position shared)."""
        pid = os.getpid()
        if self._reader is None or self._reader[0] != pid:
            self._reader = (pid, open(self.path / IMAGES, "rb", buffering=0))
        return self._reader[1]

    def read_rows(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images uint8 [B, 3, S, S] and labels int64 [B] of rows ``indices``, in that order (never flipped).

        The rows are read from images.u8 with plain reads in ascending row order (consecutive rows are one
        sequential read, a repeated row is read once), not through the memory map: the file's pages stay in
        the page cache and never count in this process's memory, which holds only the batch.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        n, S = len(self), self.img_size
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(
                f"rows must lie in [0, {n - 1}] for cache {self.path} of {n:,} images, found rows "
                f"{int(idx.min())} … {int(idx.max())}"
            )
        rowb = _row_bytes(S)
        rows = idx.numpy()
        out = np.empty((rows.size, rowb), dtype=np.uint8)  # [B, 3·S·S]
        f = self._file()
        prev_row, prev_pos = -2, -1
        for pos in np.argsort(rows, kind="stable"):
            row = int(rows[pos])
            if row == prev_row:
                out[pos] = out[prev_pos]
                continue
            if row != prev_row + 1:
                f.seek(row * rowb)
            view, done = memoryview(out[pos]), 0
            while done < rowb:
                got = f.readinto(view[done:])
                if not got:
                    raise CacheMismatch(
                        f"cache {self.path}: {IMAGES} ended inside row {row} (expected {n:,} rows of "
                        f"{rowb:,} bytes); the file changed after it was opened; "
                        + _rerun(self.manifest, self.path)
                    )
                done += got
            prev_row, prev_pos = row, pos
        images = torch.from_numpy(out).view(rows.size, 3, S, S)
        return images, self.labels.index_select(0, idx)


def _open_checked(path: Path, verify: str):
    if verify not in ("auto", "full", "sample", "none"):
        raise ValueError(f"verify must be auto|full|sample|none, found {verify!r}")
    man_p = path / MANIFEST
    if not man_p.is_file():
        if (path / STATE).is_file():
            st = json.loads((path / STATE).read_text())
            raise CacheMismatch(
                f"cache {path} is unfinished ({len(st.get('done', []))} chunks done); re-run the same "
                f"`jitkit prepare --data {st.get('source')} --size {st.get('size')} --out {path}` to resume"
            )
        raise FileNotFoundError(
            f"{path} is not a jitkit cache (no {MANIFEST}); make one with `jitkit prepare`"
        )
    try:
        man = json.loads(man_p.read_text())
    except json.JSONDecodeError as e:
        raise CacheMismatch(
            f"cache {path}: {MANIFEST} is not valid JSON ({e}); re-run `jitkit prepare`"
        ) from e
    if man.get("format") != FORMAT or man.get("version") != VERSION:
        raise CacheMismatch(
            f"cache {path}: expected format {FORMAT} v{VERSION}, found {man.get('format')} v{man.get('version')}; "
            + _rerun(man, path)
        )
    size, count = int(man["size"]), int(man["count"])
    images_p = path / IMAGES
    want = count * _row_bytes(size)
    have = images_p.stat().st_size if images_p.exists() else None
    if have != want:
        raise CacheMismatch(
            f"cache {path} does not match its manifest: {IMAGES} holds {have} bytes, expected {count:,} images "
            f"× 3×{size}×{size} = {want:,} bytes; " + _rerun(man, path)
        )
    try:
        labels = np.load(path / "labels.npy", allow_pickle=False)
        classes = json.loads((path / "classes.json").read_text())
    except (OSError, ValueError) as e:
        raise CacheMismatch(f"cache {path}: cannot read labels/classes ({e}); " + _rerun(man, path)) from e
    if labels.shape != (count,) or len(classes) != int(man["num_classes"]):
        raise CacheMismatch(
            f"cache {path} does not match its manifest: {labels.shape[0] if labels.ndim else 0:,} labels and "
            f"{len(classes)} classes, expected {count:,} and {man['num_classes']}; " + _rerun(man, path)
        )
    mm = np.memmap(images_p, dtype=np.uint8, mode="c", shape=(count, 3, size, size))
    if verify != "none":
        if _sample_checksum(mm, labels, classes) != man.get("sample_checksum"):
            raise CacheMismatch(
                f"cache {path}: sample checksum mismatch (data changed); " + _rerun(man, path)
            )
        if verify == "full" or (verify == "auto" and want <= FULL_VERIFY_BYTES):
            if _file_checksum(images_p, labels) != man.get("checksum"):
                raise CacheMismatch(f"cache {path}: checksum mismatch (data changed); " + _rerun(man, path))
    return man, torch.from_numpy(mm), torch.from_numpy(labels.astype(np.int64)), classes


def open_cache(path: str | Path, verify: str = "auto") -> CacheDataset:
    """Open a prepared cache (verified against its manifest; see the module docstring)."""
    return CacheDataset(path, verify=verify)
