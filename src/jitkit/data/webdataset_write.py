"""Writing WebDataset shards (``jitkit prepare --format webdataset``): the layout and the streaming rule are
described in :mod:`jitkit.data.webdataset`, which reads them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from jitkit.data.crop import UnreadableImage, load_cropped
from jitkit.data.folder import info, resume_prepare, scan_folder, small_images_note, summarize_bad
from jitkit.data.webdataset import FORMAT, IMAGE_EXT, MANIFEST, PARTIAL, VERSION, shard_name
from jitkit.fileio import atomic_write_bytes, file_sha256

__all__ = ["prepare_shards"]


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


# --- prepare -------------------------------------------------------------------------------------------


def _encode(chw: np.ndarray, image_format: str, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))  # [S, S, 3]
    if image_format == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)  # fixed metadata: the same images give the same bytes (and checksum)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o444, 0, 0, "", ""
    tar.addfile(ti, io.BytesIO(data))


def _write_shard(path: str, items: list, size: int, image_format: str, quality: int) -> tuple:
    """Worker: decode, crop and encode ``items`` [(key index, file, label)] into the tar ``path`` (written to
    a temporary name, then renamed). Returns (count, bytes, sha256, bad [(file, reason)])."""
    buf, bad, n = io.BytesIO(), [], 0
    ext = IMAGE_EXT[image_format]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for idx, file, label in items:
            try:
                chw = load_cropped(file, size)  # [3, S, S]
            except UnreadableImage as e:
                bad.append((file, str(e)))
                continue
            key = f"{idx:08d}"
            _add_member(tar, f"{key}.{ext}", _encode(chw, image_format, quality))
            _add_member(tar, f"{key}.cls", str(int(label)).encode())
            n += 1
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return n, len(data), hashlib.sha256(data).hexdigest(), bad


def _plan_id(source, split, size, shard_size, image_format, quality, seed, rel, labels, classes) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [FORMAT, VERSION, source, split, size, shard_size, image_format, quality, seed, classes]
        ).encode()
    )
    for f, y in zip(rel, labels):
        h.update(os.fsencode(f) + f"\t{y}\n".encode())
    return h.hexdigest()


def prepare_shards(
    data: str | Path,
    size: int,
    out: str | Path,
    *,
    shard_size: int = 1000,
    image_format: str = "png",
    quality: int = 95,
    split: str = "train",
    seed: int = 0,
    workers: int = -1,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Decode and ADM-center-crop every image of the folder ``data`` into WebDataset shards at ``out``.

    ``shard_size`` images per shard (the last may hold fewer; unreadable files are skipped with one warning
    line, or an error with ``strict``), as PNG (lossless) or JPEG (``quality``). Shards are written in a
    process pool (``workers``; −1 sizes it from CPUs and memory); after each one manifest.partial.json records
    it, so re-running the same command after an interruption skips every shard whose checksum matches.
    manifest.json is written last.
    """
    from tqdm import tqdm

    from jitkit.data.cache import prepare_workers

    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, found {size}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be a positive number of images per shard, found {shard_size}")
    image_format = str(image_format).lower().replace("jpg", "jpeg")
    if image_format not in IMAGE_EXT:
        raise ValueError(f"image_format must be png or jpeg, found {image_format!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in [1, 100], found {quality}")
    data, out = Path(data).expanduser(), Path(out).expanduser()
    scan = scan_folder(data, split)
    info(scan.describe(data))
    note = small_images_note(scan.files, size, param="size")
    if note:
        info(note)
    source, root = str(data.resolve()), scan.root.resolve()
    rel = [os.path.relpath(f, scan.root) for f in scan.files]
    quality = int(quality) if image_format == "jpeg" else None
    plan_id = _plan_id(
        source, split, size, shard_size, image_format, quality, seed, rel, scan.labels, scan.classes
    )
    count = len(scan.files)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed))).tolist()
    groups = [order[i : i + shard_size] for i in range(0, count, shard_size)]

    finished, part = resume_prepare(
        out,
        plan_id,
        overwrite,
        manifest=MANIFEST,
        partial=PARTIAL,
        kind="set of shards",
        remove=_remove_shard_files,
    )
    if finished:
        return out
    done: dict = {int(k): v for k, v in part["shards"].items()} if part else {}
    out.mkdir(parents=True, exist_ok=True)

    kept = {
        i: e
        for i, e in done.items()
        if i < len(groups) and (out / e["name"]).is_file() and file_sha256(out / e["name"]) == e["sha256"]
    }
    if kept:
        info(f"resuming: {len(kept):,} of {len(groups):,} shards already written")
    partial = {
        "plan_id": plan_id,
        "source": source,
        "size": size,
        "shards": {str(i): e for i, e in kept.items()},
    }
    _write_json(out / PARTIAL, partial)
    todo = [i for i in range(len(groups)) if i not in kept]

    def args_of(i: int):
        items = [(j, scan.files[j], scan.labels[j]) for j in groups[i]]
        return str(out / shard_name(i)), items, size, image_format, quality or 95

    def finish(i: int, result: tuple) -> None:
        n, nbytes, sha, bad = result
        kept[i] = {
            "name": shard_name(i),
            "count": n,
            "bytes": nbytes,
            "sha256": sha,
            "skipped": [[os.path.relpath(p, root), why] for p, why in bad],
        }
        partial["shards"] = {str(k): v for k, v in sorted(kept.items())}
        _write_json(out / PARTIAL, partial)
        if strict and bad:
            raise UnreadableImage(
                summarize_bad(bad, count, root).replace("warning: skipped", "found", 1)
                + "; fix or remove them and re-run with overwrite=True, or with strict=False to skip them"
            )

    t0 = time.time()
    nproc = min(prepare_workers(workers), max(1, len(todo)))
    bar = tqdm(
        total=len(groups), initial=len(kept), unit="shard", desc=f"shards {size}px", disable=not progress
    )
    try:
        if nproc <= 1:
            for i in todo:
                finish(i, _write_shard(*args_of(i)))
                bar.update(1)
        else:
            import multiprocessing as mp
            import sys
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(max_workers=nproc, mp_context=ctx) as ex:
                futures = {i: ex.submit(_write_shard, *args_of(i)) for i in todo}
                for i, fut in futures.items():
                    finish(i, fut.result())
                    bar.update(1)
    finally:
        bar.close()

    entries = [kept[i] for i in range(len(groups))]
    skipped = [s for e in entries for s in e.pop("skipped", [])]
    if skipped:
        info(summarize_bad([(str(root / p), why) for p, why in skipped], count, root))
    n = sum(e["count"] for e in entries)
    if n == 0:
        raise FileNotFoundError(f"no readable images in {root}")
    from jitkit import __version__

    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "root": str(root),
        "layout": scan.layout,
        "split": split,
        "size": size,
        "image_format": image_format,
        "quality": quality,
        "shard_size": shard_size,
        "seed": seed,
        "count": n,
        "classes": list(scan.classes),
        "num_classes": len(scan.classes),
        "shards": entries,
        "skipped": skipped,
        "plan_id": plan_id,
        "jitkit": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(out / MANIFEST, manifest)
    (out / PARTIAL).unlink(missing_ok=True)
    info(
        f"wrote {n:,} images in {len(entries):,} shards ({len(scan.classes):,} classes) to {out} "
        f"({time.time() - t0:.1f} s with {nproc} process(es))"
    )
    return out


def _remove_shard_files(out: Path) -> None:
    for p in out.glob("shard-*.tar"):
        p.unlink()
    for name in (MANIFEST, PARTIAL):
        (out / name).unlink(missing_ok=True)


# --- open ----------------------------------------------------------------------------------------------
