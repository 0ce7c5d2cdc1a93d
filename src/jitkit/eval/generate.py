"""Generation to memory and to disk: per-image seeds, progress, sample folders, npz files, grids.

Reproducibility: the starting noise of image i is drawn from its own generator seeded by
SeedSequence([seed, i]), so image i depends only on (seed, i, its label, the model and the sampler) —
not on the batch it falls in, the number of processes, or whether the run was interrupted and resumed.

Rank splitting: with W processes, rank r makes the images i ≡ r (mod W) of the plan; the union over ranks is
every index exactly once. Resuming: images already in the sample folder are skipped.

Sample folder (DESIGN, Formats): flat ``00000.png …`` plus ``labels.csv`` (``file,class_index,class_name``),
written once the folder is complete, and ``sample_meta.json`` (what was asked for, to refuse mixing runs).
npz: ``arr_0`` uint8 [N, S, S, 3] (the layout of the ADM evaluation suite) and ``arr_1`` int64 labels [N].

Shape key: N images, B batch, C channels, S side.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.sampling import network_evaluations, sample, to_uint8
from jitkit.fileio import atomic_write_bytes

# -- small utilities ---------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → cuda if available, else mps if available, else cpu; anything else is checked to exist."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, found {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device auto or cpu")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"--device {name}: MPS is not available on this machine; use --device auto or cpu"
            )
    return dev


def image_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image ``index`` of a run with ``seed`` (distinct pairs give unrelated seeds)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def indexed_noise(
    indices: Sequence[int], shape: tuple[int, ...], noise_scale: float, seed: int
) -> torch.Tensor:
    """noise_scale·N(0, I) [len(indices), *shape] on the CPU; row k depends only on (seed, indices[k])."""
    out = torch.empty((len(indices), *shape))
    for k, i in enumerate(indices):
        g = torch.Generator().manual_seed(image_seed(seed, int(i)))
        out[k] = torch.randn(shape, generator=g)
    return out * noise_scale


def balanced_labels(
    num_classes: int,
    *,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    num: int | None = None,
) -> np.ndarray:
    """The labels to generate, class-major (all images of the first class, then the next, …).

    ``classes`` (default: all) × ``per_class`` images; or ``num`` images balanced over the classes (the first
    num mod C classes get one more). ``per_class`` and ``num`` are exclusive; neither → 1 per class.
    """
    cls = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in cls if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class indices must lie in [0, {num_classes - 1}] for this model, found {bad}")
    if not cls:
        raise ValueError("no classes to sample: --classes is empty")
    if per_class is not None and num is not None:
        raise ValueError("give either --per-class or --num, not both")
    if num is not None:
        if num < 1:
            raise ValueError(f"--num must be >= 1, found {num}")
        q, r = divmod(int(num), len(cls))
        counts = [q + (1 if k < r else 0) for k in range(len(cls))]
    else:
        per = 1 if per_class is None else int(per_class)
        if per < 1:
            raise ValueError(f"--per-class must be >= 1, found {per}")
        counts = [per] * len(cls)
    return np.concatenate([np.full(n, c, dtype=np.int64) for c, n in zip(cls, counts)])


def rank_indices(n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The plan indices rank ``rank`` of ``world_size`` makes: i ≡ rank (mod world_size)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), found rank={rank}, world_size={world_size}")
    return list(range(rank, n, world_size))


def dist_env() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment (0, 1 outside torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def _hwc(images: Any) -> np.ndarray:
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim != 4 or a.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images [N, 3, S, S] or [N, S, S, 3], found {a.dtype} {list(a.shape)}"
        )
    if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)  # [N,C,S,S] -> [N,S,S,C]
    elif a.shape[-1] not in (1, 3):
        raise ValueError(f"expected images with 1 or 3 channels, found shape {list(a.shape)}")
    return a


# -- generation ------------------------------------------------------------------------------------------


def denoiser_image_shape(denoiser: torch.nn.Module) -> tuple[int, int, int]:
    cfg = denoiser.net.cfg
    return (cfg.in_channels, cfg.img_size, cfg.img_size)


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        disable=not enabled,
        desc=desc,
        unit="img",
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} img [{elapsed}<{remaining}, {rate_fmt}]",
    )


@torch.no_grad()
def generate_images(
    denoiser: torch.nn.Module,
    labels: Any,
    sampler_cfg: SamplerConfig,
    *,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    indices: Sequence[int] | None = None,
    on_batch: Callable[[list[int], torch.Tensor, np.ndarray], None] | None = None,
    precision: str = "fp32",
    desc: str = "sampling",
) -> torch.Tensor:
    """Sample one image per label with the denoiser (eval mode) → uint8 [N, C, S, S] on the CPU.

    ``indices``: the plan index of each label (default 0 … N−1); image k starts from the noise of
    (seed, indices[k]). ``on_batch(indices, images_uint8, labels)`` is called after every batch (writers).
    ``precision``: fp32 | bf16 | fp16 (autocast on the device; fp32 is exact).
    The progress bar counts images (fractions while a batch is under way) with images/s and ETA.
    """
    y_all = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(
        -1
    )
    n = len(y_all)
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(idx) != n:
        raise ValueError(f"{n} labels but {len(idx)} indices; expected one plan index per label")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, found {batch_size}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, found {precision!r}")
    if device is None:
        device = next(denoiser.parameters()).device
    device = torch.device(device)
    denoiser = denoiser.to(device).eval()
    ncls = int(getattr(denoiser, "num_classes", 0) or 0)
    if n and ncls and (y_all.min() < 0 or y_all.max() >= ncls):
        raise ValueError(
            f"labels must lie in [0, {ncls - 1}] for this model, found {y_all.min()}..{y_all.max()}"
        )
    shape = denoiser_image_shape(denoiser)
    dcfg = denoiser.cfg
    out = torch.empty((n, *shape), dtype=torch.uint8)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def velocity(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if amp_dtype is None:
            return denoiser.predict(z, t, y, kind="v")
        with torch.autocast(device.type, dtype=amp_dtype):
            return denoiser.predict(z, t, y, kind="v").float()

    bar = _progress_bar(n, progress, desc)
    try:
        for s in range(0, n, batch_size):
            bidx = idx[s : s + batch_size]
            b = len(bidx)
            y = torch.as_tensor(y_all[s : s + b], device=device)
            z0 = indexed_noise(bidx, shape, dcfg.noise_scale, seed).to(device)

            def on_step(k: int, total: int, s: int = s, b: int = b) -> None:
                bar.update(min(s + b * k / total, n) - bar.n)  # fractional images while a batch runs

            z = sample(velocity, z0, y, sampler_cfg, denoiser.null_class, t_eps=dcfg.t_eps, on_step=on_step)
            imgs = to_uint8(z).cpu()
            out[s : s + b] = imgs
            bar.n = s + b
            bar.refresh()
            if on_batch is not None:
                on_batch(bidx, imgs, y_all[s : s + b])
    finally:
        bar.close()
    return out


def sampling_cost(sampler_cfg: SamplerConfig) -> str:
    """A one-line description of the work per image: forwards and whether CFG doubles them."""
    nfe = network_evaluations(sampler_cfg)
    return (
        f"{sampler_cfg.method} {sampler_cfg.steps} steps ({nfe} network evaluations), cfg {sampler_cfg.cfg}"
    )


# -- grids -----------------------------------------------------------------------------------------------


def make_grid(
    images: Any, labels: Any, classes: Sequence[str] | None = None, *, scale: int | None = None, pad: int = 2
) -> np.ndarray:
    """One row per class present (ascending class index), images in their order → uint8 [H, W, 3].

    Small images are enlarged (nearest neighbour) to at least 64 px; with ``classes`` the row names are
    written in a left margin.
    """
    a = _hwc(images)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    if len(y) != len(a):
        raise ValueError(f"{len(a)} images but {len(y)} labels")
    if len(a) == 0:
        raise ValueError("no images to put in a grid")
    S = a.shape[1]
    if scale is None:
        scale = max(1, math.ceil(64 / S))
    if scale > 1:
        a = a.repeat(scale, axis=1).repeat(scale, axis=2)
    T = a.shape[1]
    rows = sorted(set(y.tolist()))
    cols = max(int((y == c).sum()) for c in rows)
    margin = 0
    if classes is not None:
        margin = 8 + 6 * max(len(str(classes[c])) if 0 <= c < len(classes) else 4 for c in rows)
    H = pad + len(rows) * (T + pad)
    W = margin + pad + cols * (T + pad)
    grid = np.full((H, W, 3), 255, dtype=np.uint8)
    for r, c in enumerate(rows):
        for k, i in enumerate(np.nonzero(y == c)[0]):
            top, left = pad + r * (T + pad), margin + pad + k * (T + pad)
            grid[top : top + T, left : left + T] = a[i][..., :3] if a.shape[-1] == 3 else a[i]
    if classes is not None:
        from PIL import Image, ImageDraw

        im = Image.fromarray(grid)
        draw = ImageDraw.Draw(im)
        for r, c in enumerate(rows):
            name = str(classes[c]) if 0 <= c < len(classes) else str(c)
            draw.text((4, pad + r * (T + pad) + T // 2 - 5), name, fill=(0, 0, 0))
        grid = np.asarray(im)
    return grid


def save_grid(
    images: Any,
    labels: Any,
    path: str | Path,
    classes: Sequence[str] | None = None,
    *,
    scale: int | None = None,
) -> Path:
    """Write ``make_grid`` as a PNG (atomically) and return its path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--grid expects a .png file name, found {str(path)!r}")
    atomic_write_bytes(path, _png_bytes(make_grid(images, labels, classes, scale=scale)))
    return path


# -- npz -------------------------------------------------------------------------------------------------


def save_npz(path: str | Path, images: Any, labels: Any, classes: Sequence[str] | None = None) -> Path:
    """uint8 images and int64 labels as ``arr_0`` [N, S, S, 3] and ``arr_1`` [N] (+ ``classes``), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"--npz expects a .npz file name, found {str(path)!r}")
    a = _hwc(images)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    if len(y) != len(a):
        raise ValueError(f"{len(a)} images but {len(y)} labels")
    buf = io.BytesIO()
    extra = {"classes": np.asarray(list(classes), dtype=str)} if classes is not None else {}
    np.savez(buf, arr_0=a, arr_1=y, **extra)
    atomic_write_bytes(path, buf.getvalue())
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

LABELS_CSV = "labels.csv"
META_JSON = "sample_meta.json"


def image_name(i: int) -> str:
    return f"{i:05d}.png"


class SampleFolder:
    """A sample folder being written: flat ``00000.png …``, ``labels.csv``, ``sample_meta.json``.

    Each PNG is written atomically (temp + fsync + rename), so a file that exists is complete; re-running
    skips them. ``meta`` records the request (checkpoint, sampler, seed, labels); resuming with a different
    request is refused rather than mixing two runs in one folder.
    """

    def __init__(
        self, root: str | Path, labels: Sequence[int], classes: Sequence[str], meta: dict | None = None
    ):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"--out expects a folder, found a file: {self.root}")
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = list(classes)
        self.meta = dict(meta or {})
        self.meta["num_images"] = len(self.labels)
        self.meta["labels_sha"] = _labels_digest(self.labels)

    def check_or_write_meta(self) -> None:
        """Refuse a folder that holds another request's images; otherwise record this request."""
        p = self.root / META_JSON
        if p.exists():
            try:
                old = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{p} is not valid JSON ({e}); delete it or choose another --out") from e
            diff = {k: (old.get(k), v) for k, v in self.meta.items() if old.get(k) != v}
            if diff:
                lines = "; ".join(f"{k}: folder has {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"{self.root} already holds samples of a different request ({lines}); "
                    "use the same options to resume, or choose another --out"
                )
            return
        if not self.existing() and any(self.root.glob("*.png")):
            raise ValueError(
                f"{self.root} already contains PNG files that are not a jitkit sample folder; choose another --out"
            )
        atomic_write_bytes(p, (json.dumps(self.meta, indent=2, sort_keys=True) + "\n").encode())

    def existing(self) -> set[int]:
        """Plan indices whose PNG is already in the folder."""
        if not self.root.is_dir():
            return set()
        return {i for i in range(len(self.labels)) if (self.root / image_name(i)).is_file()}

    def todo(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """This rank's share of the plan, minus what is already written."""
        have = self.existing()
        return [i for i in rank_indices(len(self.labels), rank, world_size) if i not in have]

    def write(self, indices: Iterable[int], images: Any) -> None:
        a = _hwc(images)
        for i, img in zip(indices, a):
            atomic_write_bytes(self.root / image_name(int(i)), _png_bytes(img))

    def complete(self) -> bool:
        return len(self.existing()) == len(self.labels)

    def finish(self) -> bool:
        """Write labels.csv when every image of the plan is present; returns whether it did."""
        if not self.complete():
            return False
        write_labels_csv(self.root, self.labels, self.classes)
        return True


def _labels_digest(labels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def write_labels_csv(root: str | Path, labels: Sequence[int], classes: Sequence[str]) -> Path:
    """``labels.csv`` with ``file,class_index,class_name`` for images 0 … N−1 (atomic)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "class_index", "class_name"])
    for i, c in enumerate(np.asarray(labels).reshape(-1).tolist()):
        w.writerow([image_name(i), int(c), classes[int(c)] if 0 <= int(c) < len(classes) else str(c)])
    path = Path(root) / LABELS_CSV
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_sample_folder(root: str | Path, *, with_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a sample folder → (uint8 images [N, 3, S, S], labels [N] or None).

    With ``labels.csv`` the files it lists are read in its order; without it every ``*.png`` (sorted).
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"expected a sample folder (PNG files + labels.csv), found {root}")
    csv_path = root / LABELS_CSV
    labels = None
    if csv_path.is_file() and with_labels:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"file", "class_index"} <= set(rows[0]):
            raise ValueError(
                f"{csv_path}: expected columns file,class_index,class_name, found {list(rows[0])}"
            )
        files = [root / r["file"] for r in rows]
        labels = np.asarray([int(r["class_index"]) for r in rows], dtype=np.int64)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{csv_path} lists {len(missing)} file(s) that are missing, e.g. {missing[:3]}; "
                "was sampling interrupted? re-run the same jitkit sample command to finish it"
            )
    else:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{root}: no PNG images found")
    arrs = []
    for f in files:
        with Image.open(f) as im:
            arrs.append(np.asarray(im.convert("RGB")))
    sizes = {a.shape for a in arrs}
    if len(sizes) > 1:
        raise ValueError(f"{root}: images have different sizes {sorted(sizes)[:3]}; expected one size")
    return np.stack(arrs).transpose(0, 3, 1, 2).copy(), labels


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


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def sample_to_outputs(
    denoiser: torch.nn.Module,
    labels: np.ndarray,
    sampler_cfg: SamplerConfig,
    classes: Sequence[str],
    *,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
    npz: str | Path | None = None,
    grid: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    precision: str = "fp32",
    meta: dict | None = None,
) -> dict[str, Any]:
    """Generate ``labels`` into any of a sample folder, an npz file and a grid PNG, split over ranks.

    The folder is resumable (existing images are skipped) and gets ``labels.csv`` when complete. npz and grid
    need all images in one process: with world_size > 1 each rank writes its share next to the npz/grid path as
    ``.part-R-of-W.npz`` and rank 0 (after a barrier) merges them; ranks that are simulated in sequence
    (no process group) merge when the last part arrives. Returns a summary dict.
    """
    if out_dir is None and npz is None and grid is None:
        raise ValueError("choose an output: --grid FILE.png, --out DIR or --npz FILE.npz")
    # check the outputs before spending time on sampling
    if grid is not None and Path(grid).suffix.lower() != ".png":
        raise ValueError(f"--grid expects a .png file name, found {str(grid)!r}")
    if npz is not None and Path(npz).suffix.lower() != ".npz":
        raise ValueError(f"--npz expects a .npz file name, found {str(npz)!r}")
    for f in (grid, npz):
        if f is not None and Path(f).is_dir():
            raise IsADirectoryError(f"{f} is a folder; expected a file name")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels)
    summary: dict[str, Any] = {"num_images": n, "rank": rank, "world_size": world_size}
    mine = rank_indices(n, rank, world_size)
    folder = None
    if out_dir is not None:
        folder = SampleFolder(out_dir, labels, classes, meta)
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.check_or_write_meta()
    need_all = npz is not None or grid is not None
    # with a folder, its finished images are skipped (and reused for the npz/grid)
    todo_gen = folder.todo(rank, world_size) if folder is not None else mine
    summary["skipped"] = len(mine) - len(todo_gen)
    gen_images: dict[int, np.ndarray] = {}

    def on_batch(bidx: list[int], imgs: torch.Tensor, _y: np.ndarray) -> None:
        if folder is not None:
            folder.write(bidx, imgs)
        if need_all:
            for i, im in zip(bidx, imgs.numpy()):
                gen_images[i] = im

    if todo_gen:
        generate_images(
            denoiser,
            labels[todo_gen],
            sampler_cfg,
            seed=seed,
            batch_size=batch_size,
            device=device,
            progress=progress,
            indices=todo_gen,
            on_batch=on_batch,
            precision=precision,
            desc=f"sampling (rank {rank}/{world_size})" if world_size > 1 else "sampling",
        )
    summary["generated"] = len(todo_gen)

    if folder is not None:
        _barrier()
        if rank == 0 or not _dist_initialized():
            summary["complete"] = folder.finish()
        summary["out"] = str(folder.root)

    if need_all:
        if folder is not None:
            for i in mine:
                if i not in gen_images:
                    gen_images[i] = read_sample_folder_file(folder.root / image_name(i))
        part = np.stack([gen_images[i] for i in mine]) if mine else None
        target = Path(npz) if npz is not None else Path(grid)
        images = _gather_parts(target, part, mine, n, rank, world_size)
        if images is not None:
            if npz is not None:
                save_npz(npz, images, labels, classes)
                summary["npz"] = str(npz)
            if grid is not None:
                save_grid(images, labels, grid, classes)
                summary["grid"] = str(grid)
    return summary


def read_sample_folder_file(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _part_path(target: Path, rank: int, world_size: int) -> Path:
    return target.with_name(f".{target.name}.part-{rank}-of-{world_size}.npz")


def _gather_parts(
    target: Path, part: np.ndarray | None, mine: list[int], n: int, rank: int, world_size: int
) -> np.ndarray | None:
    """All N images in plan order on the merging rank (None elsewhere)."""
    if world_size == 1:
        return part
    buf = io.BytesIO()
    np.savez(buf, images=part if part is not None else np.zeros((0,), np.uint8), indices=np.asarray(mine))
    atomic_write_bytes(_part_path(target, rank, world_size), buf.getvalue())
    _barrier()
    if _dist_initialized() and rank != 0:
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
