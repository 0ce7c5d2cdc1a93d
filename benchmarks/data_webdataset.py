"""Images/s of reading WebDataset shards against the memory-mapped cache, for the same images.

Generates a temporary folder of random-field PNGs (default 2,000 at 64 px, four classes), prepares it once as
a cache and once as shards (PNG; with ``--jpeg`` also JPEG shards), then reads one epoch of each:
  * cache, indexed: ``CacheDataset.images.index_select`` in batches of a random permutation (what the
    trainer does when the cache fits in memory);
  * cache, read_rows: sorted plain file reads per batch (the streamed path, in the training process);
  * shards: ``ShardDataset.chunks`` (tar read + PNG/JPEG decode + shuffle buffer) with 0 and ``--workers``
    DataLoader workers.
The files sit in the page cache (no attempt to drop caches). Prints a table (markdown).

    python benchmarks/data_webdataset.py --n 2000 --size 64 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jitkit.data.cache import open_cache, prepare_cache
from jitkit.data.webdataset import open_shards
from jitkit.data.webdataset_write import prepare_shards


def make_pngs(root: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"class{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)  # smooth fields: PNG compresses
        img.save(d / f"{i:06d}.png")


def rate(n: int, fn) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return n / dt, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--jpeg", action="store_true", help="also JPEG shards (quality 95)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_pngs(tmp / "img", args.n, args.size)
        cache = open_cache(prepare_cache(tmp / "img", args.size, tmp / "cache", progress=False))
        n, B = len(cache), args.batch
        perm = torch.randperm(n)
        batches = [perm[i : i + B] for i in range(0, n - B + 1, B)]
        used = len(batches) * B

        def indexed():
            for idx in batches:
                cache.images.index_select(0, idx).sum()

        def read_rows():
            for idx in batches:
                cache.read_rows(idx)

        cache.images.sum()  # pages in
        rows.append(("cache, indexed (in memory)", 0, *rate(used, indexed)))
        rows.append(("cache, read_rows", 0, *rate(used, read_rows)))
        formats = [("png", {})] + ([("jpeg", {"image_format": "jpeg", "quality": 95})] if args.jpeg else [])
        for fmt, kw in formats:
            out = prepare_shards(
                tmp / "img", args.size, tmp / f"sh-{fmt}", shard_size=args.shard_size, progress=False, **kw
            )
            ds = open_shards(out)
            for w in sorted({0, args.workers}):

                def stream(ds=ds, w=w):
                    for _ in ds.chunks(0, 0, rank=0, world=1, micro=B, workers=w, count=len(batches)):
                        pass

                rows.append((f"shards ({fmt})", w, *rate(used, stream)))
    print(
        f"{args.n:,} images at {args.size} px, batches of {args.batch}, one epoch, files in the page cache\n"
    )
    print("| reader | DataLoader workers | images/s | s/epoch |")
    print("|---|---|---|---|")
    for name, w, r, dt in rows:
        print(f"| {name} | {w} | {r:,.0f} | {dt:.2f} |")


if __name__ == "__main__":
    main()
