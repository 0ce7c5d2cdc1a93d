"""Images/s of CPU data loading: an image folder (JPEG decode + ADM crop per item) vs a prepared cache.

Generates a temporary folder of JPEGs (default 500 at 400×300, two classes), then measures
  * folder: one epoch through ``make_loader(ImageFolderDataset)`` with 0 workers and with the automatic count;
  * prepare: ``prepare_cache`` (decode + crop once, in parallel);
  * cache: one epoch through ``make_loader(CacheDataset)`` and through direct batch indexing of
    ``.images`` with index_select (what the trainer does for in-memory data). The cache is read from the
    page cache (no attempt to drop caches), as it is after the first epoch when it fits in memory.
Writes JSON to benchmarks/results/data_loading.json (and prints it).

    python benchmarks/data_loading.py --n 500 --size 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jitkit.data import make_loader
from jitkit.data.cache import open_cache, prepare_cache
from jitkit.data.folder import ImageFolderDataset
from jitkit.data.loader import available_memory, cpu_count


def make_jpegs(root: Path, n: int, w: int, h: int, seed: int = 0) -> None:
    """n photo-like JPEGs (smooth colour fields + fine noise) in two class folders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.005, 0.05, size=(3, 2))
        ph = rng.uniform(0, 6.3, size=(3,))
        chans = [127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + ph[c]) for c in range(3)]
        img = np.stack(chans, -1) + rng.normal(0, 12, size=(h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)


def epoch_rate(loader) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - t), n


def direct_rate(images: torch.Tensor, batch: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(images.shape[0], generator=g)
    t = time.perf_counter()
    n = 0
    for k in range(0, len(perm) - batch + 1, batch):
        x = images.index_select(0, perm[k : k + batch])  # what the trainer does for in-memory data
        n += x.shape[0]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="number of JPEGs (default 500)")
    ap.add_argument("--size", type=int, default=256, help="crop size (default 256)")
    ap.add_argument("--src-w", type=int, default=400)
    ap.add_argument("--src-h", type=int, default=300)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_loading.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    res: dict = {
        "command": f"python benchmarks/data_loading.py --n {args.n} --size {args.size}",
        "host": {
            "cpus": cpu_count(),
            "mem_available_gib": round((available_memory() or 0) / (1 << 30), 1),
            "loadavg_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "images": args.n,
        "source": f"{args.src_w}x{args.src_h} JPEG q90",
        "size": args.size,
        "batch": args.batch,
    }
    with tempfile.TemporaryDirectory(prefix="jitkit-bench-data-") as tmp:
        src = Path(tmp) / "src"
        make_jpegs(src, args.n, args.src_w, args.src_h)
        res["jpeg_mb"] = round(sum(p.stat().st_size for p in src.rglob("*.jpg")) / 1e6, 1)
        folder = ImageFolderDataset(src, args.size, verbose=False)
        r0, _ = epoch_rate(make_loader(folder, args.batch, workers=0, drop_last=False))
        auto = make_loader(folder, args.batch, workers=-1, drop_last=False)
        epoch_rate(auto)  # first epoch starts the persistent workers
        ra, _ = epoch_rate(auto)
        res["folder_img_per_s"] = {
            "workers_0": round(r0, 1),
            f"workers_auto_{auto.num_workers}": round(ra, 1),
        }
        del auto

        t = time.perf_counter()
        cache = prepare_cache(src, args.size, Path(tmp) / "cache", progress=False)
        res["prepare_img_per_s"] = round(args.n / (time.perf_counter() - t), 1)
        ds = open_cache(cache)
        rc0, _ = epoch_rate(make_loader(ds, args.batch, workers=0, drop_last=False))
        rc1, _ = epoch_rate(make_loader(ds, args.batch, workers=0, drop_last=False))
        rd = direct_rate(ds.images, args.batch)
        res["cache_img_per_s"] = {
            "loader_workers_0_first_epoch": round(rc0, 1),
            "loader_workers_0": round(rc1, 1),
            "direct_index_select": round(rd, 1),
        }
        res["speedup_cache_vs_folder"] = round(rc1 / max(r0, ra), 1)
        res["cache_mb"] = round((cache / "images.u8").stat().st_size / 1e6, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
