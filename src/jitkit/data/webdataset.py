"""WebDataset shards: center-cropped images in tar files, streamed for multi-node training.

Layout of SHARDS/ (written by ``jitkit prepare --format webdataset``):
  shard-000000.tar …  each sample is ``KEY.png`` (or ``KEY.jpg``) — the ADM-center-cropped image — and
                      ``KEY.cls`` — its class index as text. KEY is the image's index in the source folder's
                      sorted file list (8 digits); the images are spread over the shards in a seeded random
                      order, so that every shard holds every class.
  manifest.json       {format, version, source, split, size, image_format, quality, shard_size, count, classes,
                       num_classes, shards: [{name, count, bytes, sha256}], skipped, plan_id, jitkit}
  manifest.partial.json   only while preparing: the shards finished so far, so a re-run skips them

Every shard is written to a temporary name and renamed; manifest.json is written last.

Naming shards (``data``): the folder, a brace pattern ``SHARDS/shard-{000000..000003}.tar`` or one .tar
beside its manifest; the same as ``http(s)://`` or ``file://`` URLs (a base URL ending in ``/`` holds
BASE/manifest.json; a pattern's manifest is in the pattern's folder); or a list, a local ``*.txt`` file with
one shard path or URL a line (blank lines and ``#`` comments ignored, relative paths from the list's folder),
whose manifest is the one beside its first entry. Only shards that manifest lists are read, each once.
Locations are opened by :func:`jitkit.data.locations.open_shard`; everything after it is the same code.

Streaming (the exactly-once rule). Epoch e orders the shards by a permutation seeded by (seed, e) and reads
their samples as one sequence of N positions. Rank r of W takes positions [r·N/W, (r+1)·N/W) (integer
division), and DataLoader worker w of n of that rank takes the same kind of contiguous part of the rank's
range. Every sample is therefore read by exactly one (rank, worker) per epoch whatever N, W and n are (the
ranges differ by at most one sample; a range may start or end inside a shard, whose other samples that
worker skips without decoding). Each worker shuffles its samples through a buffer seeded by (seed, epoch,
rank, worker). The training loop uses the first ⌊N/G⌋·G/W samples of each rank (G the effective batch), as
the indexed data sets drop the last partial batch. A run resumed inside an epoch reads and drops the
epoch's samples it already used; it continues in the same order when the number of ranks and of DataLoader
workers is unchanged.

Checksums: opening checks that every local shard exists with its manifest size, and its sha256 when all
shards together are at most 1 GiB (or ``verify="full"``); otherwise each worker hashes a shard as it reads it
and refuses it, naming it, at its end (lazily). Remote shards are always checked lazily (unless
``verify="full"``, which downloads them all once up front), their size against the Content-Length the
server sends, when it sends one, before the shard is read.

Shape key: B batch, S image side; images [B, 3, S, S] uint8.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from jitkit.data.locations import (
    UnreadableLocation,
    basename,
    child,
    is_remote,
    is_url,
    location,
    open_shard,
    parent,
    read_bytes,
    stream_size,
)
from jitkit.runtime.extras import require_extra

FORMAT = "jitkit-webdataset"
VERSION = 1
MANIFEST = "manifest.json"
PARTIAL = "manifest.partial.json"
FULL_VERIFY_BYTES = 1 << 30
SHUFFLE_BUFFER = 500
IMAGE_EXT = {"png": "png", "jpeg": "jpg"}


class ShardMismatch(ValueError):
    """Shards that do not match their manifest."""


def require_webdataset():
    """The ``webdataset`` module, or :class:`~jitkit.runtime.extras.MissingExtra` saying how to install it."""
    return require_extra("webdataset", "wds", "reading WebDataset shards")


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def _expand(name: str) -> list[str]:
    if "{" not in name:
        return [name]
    from braceexpand import braceexpand  # a dependency of webdataset

    return list(braceexpand(name))


def is_shards(name: str | Path) -> bool:
    """True for what :func:`open_shards` reads (or refuses with its own message): a folder with a shard
    manifest (or an unfinished one, or shard-*.tar files and no manifest), a brace pattern such as
    ``SHARDS/shard-{000000..000003}.tar``, a path ending in .tar, an ``http(s)://`` or ``file://`` URL, or a
    shard list (a path ending in .txt)."""
    name = str(name).strip()
    if is_url(name) or ("{" in name and ".." in name) or name.lower().endswith((".tar", ".txt")):
        return True
    p = Path(name).expanduser()
    if not p.is_dir():
        return False
    if (p / PARTIAL).is_file():
        return True
    if (p / MANIFEST).is_file():
        try:
            return json.loads((p / MANIFEST).read_text()).get("format") == FORMAT
        except (OSError, ValueError):
            return False
    return any(p.glob("shard-*.tar"))


def _read_manifest(folder) -> dict:
    """The manifest in the folder location ``folder`` (a local Path or a URL ending in /)."""
    at = child(folder, MANIFEST)
    if not is_remote(folder) and not at.is_file():
        if (folder / PARTIAL).is_file():
            raise ShardMismatch(
                f"shards {folder} are unfinished (no {MANIFEST}, only {PARTIAL}); re-run the same "
                f"`jitkit prepare --format webdataset … --out {folder}` to finish them"
            )
        raise FileNotFoundError(
            f"shards in {folder}: expected a {MANIFEST} beside them (written by `jitkit prepare --format "
            f"webdataset`), found none; jitkit needs it for the counts, classes and checksums"
        )
    try:
        man = json.loads(read_bytes(at))
    except UnreadableLocation as e:
        raise UnreadableLocation(
            f"{e} (the shards' {MANIFEST}, written by `jitkit prepare --format webdataset`, must sit beside them)"
        ) from None
    except ValueError as e:
        raise ShardMismatch(f"shards {folder}: {at} is not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT or man.get("version") != VERSION:
        found = f"{man.get('format')} v{man.get('version')}" if isinstance(man, dict) else type(man).__name__
        raise ShardMismatch(f"{at}: expected format {FORMAT} v{VERSION}, found {found}")
    return man


def shards_classes(name: str | Path) -> list[str]:
    """The class list of the shards named by ``name`` (from their manifest, no shard read)."""
    return list(_select(str(name))[0]["classes"])


def _read_list(path: Path) -> list:
    """The shard locations of a list file: one path or URL a line (blank lines and ``#`` comments ignored,
    relative paths taken from the list's folder, brace patterns expanded)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shard list {path}: no such file (expected one shard path or URL a line)"
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"shard list {path}: not a text file ({e})") from None
    lines = (ln.strip() for ln in text.splitlines())
    locs = [
        location(u, relative_to=path.parent)
        for ln in lines
        if ln and not ln.startswith("#")
        for u in _expand(ln)
    ]
    if not locs:
        raise ShardMismatch(f"shard list {path}: names no shards (expected one shard path or URL a line)")
    return locs


def _select(name: str) -> tuple[dict, object, list[tuple]]:
    """(manifest, its location, [(shard location, manifest entry)] of the shards ``name`` names, in order)."""
    listed = name.lower().endswith(".txt") and not is_url(name)
    if listed:
        locs = _read_list(Path(name).expanduser())
    else:
        whole = location(name)
        if is_remote(whole) and whole.endswith("/") or not is_remote(whole) and whole.is_dir():
            man = _read_manifest(whole)
            return man, child(whole, MANIFEST), [(child(whole, e["name"]), e) for e in man.get("shards", [])]
        if not is_remote(whole) and name.endswith("/"):
            raise FileNotFoundError(f"data {name!r}: no such folder ({whole})")
        if is_remote(whole) and "{" not in name and not name.endswith(".tar"):
            raise ValueError(
                f"data {name!r}: expected a base URL ending in / (BASE/{MANIFEST} inside), a brace pattern "
                f"of shards or a .tar URL; did you mean {name}/ ?"
            )
        locs = [location(u) for u in _expand(name)]
    folder = parent(locs[0])
    if not listed and any(parent(q) != folder for q in locs):
        raise ValueError(f"data {name!r}: the shards must sit in one folder (beside their {MANIFEST})")
    man, at = _read_manifest(folder), child(folder, MANIFEST)
    by_name = {e["name"]: e for e in man.get("shards", [])}
    bad = [str(q) if parent(q) != folder else basename(q) for q in locs]
    bad = [b for q, b in zip(locs, bad) if parent(q) != folder or b not in by_name]
    if bad:
        rule = "; a list's manifest is the one beside its first entry" if listed else ""
        raise ShardMismatch(
            f"data {name!r}: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''} not listed in {at} "
            f"(it lists {len(by_name)} shards{rule})"
        )
    twice = [str(q) for q, c in Counter(locs).items() if c > 1]
    if twice:
        raise ValueError(
            f"data {name!r}: {', '.join(twice[:5])} named more than once (each shard is read once an epoch)"
        )
    return man, at, [(q, by_name[basename(q)]) for q in locs]


def epoch_slots(counts: list[int], seed: int, epoch: int, world: int, workers: int) -> list[list[tuple]]:
    """The (shard, first sample, end sample) pieces each (rank, worker) slot reads in ``epoch``, indexed by
    slot = rank · workers + worker (the exactly-once rule of the module docstring)."""
    W, n = max(1, int(world)), max(1, int(workers))
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 4242) % (2**63 - 1))
    order = torch.randperm(len(counts), generator=g).tolist()
    starts, pos = [], 0
    for i in order:  # position of each shard in the epoch's sequence
        starts.append(pos)
        pos += int(counts[i])
    N, slots = pos, []
    for r in range(W):
        a, b = r * N // W, (r + 1) * N // W
        for w in range(n):
            lo, hi = a + w * (b - a) // n, a + (w + 1) * (b - a) // n
            pieces = []
            for i, s in zip(order, starts):
                u, v = max(lo, s), min(hi, s + int(counts[i]))
                if u < v:
                    pieces.append((i, u - s, v - s))
            slots.append(pieces)
    return slots


class _HashingReader(io.RawIOBase):
    """A file read through sha256 (for the lazy per-shard check)."""

    def __init__(self, f) -> None:
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.h.update(memoryview(b)[:n])
        return n or 0


class _EpochStream(torch.utils.data.IterableDataset):
    """One rank's samples of one epoch, read by DataLoader workers: batches (images [b, 3, S, S] uint8,
    labels [b], keys) of at most ``micro`` samples (a worker's last batch may be smaller)."""

    def __init__(self, shards, manifest_at, slots, seed, epoch, rank, micro, verify_lazily, buffer) -> None:
        self.shards, self.manifest_at, self.slots = shards, manifest_at, slots
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.micro, self.verify_lazily, self.buffer = micro, verify_lazily, buffer

    def _raw(self, pieces) -> Iterator[dict]:
        require_webdataset()
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        for i, lo, hi in pieces:
            loc, entry = self.shards[i]
            try:
                with open_shard(loc) as raw:  # the only place a local shard and a URL differ
                    size = stream_size(raw)
                    if size is not None and size != int(entry["bytes"]):
                        raise ShardMismatch(_tampered(loc, self.manifest_at, size, entry))
                    f = _HashingReader(raw)
                    stream = io.BufferedReader(f, 1 << 20)
                    files = (dict(s, __url__=str(loc)) for s in tar_file_iterator(stream))
                    for j, sample in enumerate(group_by_keys(files)):
                        if lo <= j < hi:
                            yield sample
                        elif j >= hi and not self.verify_lazily:
                            break
                    if self.verify_lazily:
                        while stream.read(1 << 20):
                            pass
                        if f.h.hexdigest() != entry["sha256"]:
                            raise ShardMismatch(_tampered(loc, self.manifest_at))
            except UnreadableLocation:
                raise
            except (OSError, http.client.HTTPException) as e:  # e.g. a connection lost inside a shard
                raise UnreadableLocation(f"cannot read {loc}: {type(e).__name__}: {e}") from None

    def __iter__(self):
        from PIL import Image
        from webdataset.filters import _shuffle

        wi = torch.utils.data.get_worker_info()
        w = 0 if wi is None else wi.id
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{w}")
        xs, ys, keys = [], [], []
        for s in _shuffle(self._raw(self.slots[w]), self.buffer, self.buffer, rng=rng):
            data = s.get("png", s.get("jpg"))
            with Image.open(io.BytesIO(data)) as im:
                xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))  # [3, S, S]
            ys.append(int(s["cls"]))
            keys.append(s["__key__"])
            if len(xs) == self.micro:
                yield torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), keys
                xs, ys, keys = [], [], []
        if xs:
            yield torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), keys


def _tampered(loc, manifest_at, size: int | None = None, entry: dict | None = None) -> str:
    held = "" if size is None else f" (it holds {size:,} bytes, expected {int(entry['bytes']):,})"
    return (
        f"shard {loc}: sha256 does not match {manifest_at} (the file changed or is damaged); "
        f"re-run `jitkit prepare --format webdataset` for it or restore it{held}"
    )


def _sha256(loc) -> str:
    h = hashlib.sha256()
    with open_shard(loc) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class ShardDataset(torch.utils.data.IterableDataset):
    """WebDataset shards named by a folder, a brace pattern, a .tar path, their URLs or a list (see the
    module docstring), streamed per epoch (:meth:`chunks`). ``len`` is the number of images (from the
    manifest); ``.classes``, ``.img_size``, ``.manifest``, ``.streaming`` = True (training reads it in stream
    order, not by index)."""

    streaming = True

    def __init__(self, name: str | Path, verify: str = "auto", hflip: bool = False) -> None:
        if verify not in ("auto", "full", "size"):
            raise ValueError(f"verify must be auto|full|size, found {verify!r}")
        require_webdataset()
        man, at, self.shards = _select(str(name))
        if not self.shards:
            raise ShardMismatch(f"data {name}: found no shards (the manifest lists none)")
        self.name, self.manifest, self.manifest_at, self.hflip = str(name), man, at, hflip
        self.folder = parent(at)
        self.classes, self.img_size = list(man["classes"]), int(man["size"])
        self.counts = [int(e["count"]) for _, e in self.shards]
        self.remote = any(is_remote(loc) for loc, _ in self.shards)
        total = 0
        for loc, e in self.shards:
            if is_remote(loc):  # checked as it is read: Content-Length first, sha256 at its end
                continue
            have = loc.stat().st_size if loc.is_file() else None
            if have is None:
                raise FileNotFoundError(f"shard {loc} is listed in {at} but missing")
            if have != int(e["bytes"]):
                raise ShardMismatch(_tampered(loc, at, have, e))
            total += have
        small = verify == "auto" and total <= FULL_VERIFY_BYTES and not self.remote
        self.verify_lazily = not (verify == "full" or small)
        if not self.verify_lazily:
            for loc, e in self.shards:
                if _sha256(loc) != e["sha256"]:
                    raise ShardMismatch(_tampered(loc, at))
        if sum(self.counts) == 0:
            raise ShardMismatch(f"data {name}: the shards hold no images")

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self):  # the whole set once, in epoch 0's order of one rank (e.g. to look at it)
        for x, y, _ in self.stream(0, 0, rank=0, world=1, micro=64, workers=0):
            yield from zip(x, y.tolist())

    def stream(
        self,
        epoch: int,
        seed: int,
        *,
        rank: int,
        world: int,
        micro: int,
        workers=0,
        buffer: int = SHUFFLE_BUFFER,
        device: str | torch.device = "cpu",
    ):
        """This rank's samples of ``epoch`` as a DataLoader of batches (images, labels, keys) of at most
        ``micro`` (``workers``: a count or a ``LoaderPlan``)."""
        from jitkit.data.loader import LoaderPlan, plan_workers

        plan = (
            workers
            if isinstance(workers, LoaderPlan)
            else plan_workers(cpus=0, mem_available=0, batch_bytes=0, requested=int(workers))
        )
        n = max(1, plan.workers)
        slots = epoch_slots(self.counts, seed, epoch, world, n)[rank * n : (rank + 1) * n]
        ds = _EpochStream(
            self.shards, self.manifest_at, slots, seed, epoch, rank, micro, self.verify_lazily, buffer
        )
        kw = {"prefetch_factor": plan.prefetch_factor} if plan.workers > 0 else {}
        return torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            num_workers=plan.workers,
            pin_memory=torch.device(device).type == "cuda",
            **kw,
        )

    def chunks(
        self,
        epoch: int,
        seed: int,
        *,
        rank: int,
        world: int,
        micro: int,
        workers=0,
        start: int = 0,
        count: int | None = None,
        buffer: int = SHUFFLE_BUFFER,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """Chunks ``start`` … ``start + count − 1`` of exactly ``micro`` samples of this rank's stream of
        ``epoch`` (the first ``start`` chunks are read and dropped: resuming inside an epoch)."""
        loader = self.stream(
            epoch, seed, rank=rank, world=world, micro=micro, workers=workers, buffer=buffer, device=device
        )
        xs, ys, keys, have, made = [], [], [], 0, 0
        for x, y, k in loader:
            xs.append(x)
            ys.append(y)
            keys.extend(k)
            have += len(k)
            while have >= micro:
                X, Y = torch.cat(xs), torch.cat(ys)
                if made >= start:
                    yield X[:micro], Y[:micro], keys[:micro]
                made += 1
                xs, ys, keys, have = [X[micro:]], [Y[micro:]], keys[micro:], have - micro
                if count is not None and made >= start + count:
                    return
        if count is not None and made < start + count:
            raise ShardMismatch(
                f"shards {self.name}: rank {rank} of {world} got {made} chunks of {micro} in epoch {epoch}, "
                f"expected {start + count}; the shards hold fewer samples than their manifest says"
            )


def open_shards(name: str | Path, verify: str = "auto") -> ShardDataset:
    """Open the shards named by ``name`` (checked against their manifest; see the module docstring)."""
    return ShardDataset(name, verify=verify)
