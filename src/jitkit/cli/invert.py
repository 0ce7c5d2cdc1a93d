"""``jitkit invert``: the starting noise of given images (ODE inversion), for ``jitkit sample --noise``."""

from __future__ import annotations

import argparse
import sys

from jitkit.cli.sample import add_device_args, add_sampler_args, parse_classes, sampler_overrides

# library parameters → the flags that set them (for errors)
_FLAGS = {
    "steps": "steps",
    "cfg": "cfg",
    "interval": "interval",
    "sampler": "sampler",
    "time_grid": "time_grid",
    "iters": "iters",
    "sweeps": "sweeps",
    "batch_size": "batch_size",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "invert",
        help="find the noise from which a model regenerates given images (ODE inversion, t from 1 to 0)",
        description=(
            "Integrate a run's flow backwards, from the images (t = 1) to noise (t = 0), with the chosen "
            "solver's steps solved for their start (fixed-point iterations), and write the noise as an .npz "
            "that `jitkit sample RUN --noise FILE` regenerates the images from (or, with --classes, turns into "
            "other classes). Prints the reconstruction error; --study S1,S2,… reports it against the steps."
        ),
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run folder, checkpoint folder or a file in one")
    p.add_argument(
        "--images",
        required=True,
        metavar="DIR_OR_NPZ",
        help="a folder of images (a sample folder's labels.csv gives their classes), an .npz, or 'data' (the "
        "run's own data set, validation split)",
    )
    p.add_argument("--class", dest="class_", default=None, help="class name or index of every image")
    p.add_argument("--limit", type=int, default=0, help="invert at most N images (0: all)")
    p.add_argument(
        "--out", default=None, metavar="NPZ", help="write the noise here (for jitkit sample --noise)"
    )
    add_sampler_args(p)
    p.add_argument("--iters", type=int, default=2, help="fixed-point iterations per step (default 2)")
    p.add_argument(
        "--sweeps", type=int, default=None, help="backward passes (default 1; multistep solvers 2)"
    )
    p.add_argument(
        "--study", default=None, metavar="S1,S2,…", help="report the reconstruction error at these steps"
    )
    p.add_argument("--json", default=None, metavar="FILE", help="write the errors (and the study) as JSON")
    p.add_argument("--ema", choices=["1", "2", "none"], default="1", help="which weights (default: EMA 1)")
    p.add_argument("--batch-size", type=int, default=16)
    add_device_args(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_invert)


def _read_images(spec: str, cfg, class_names: list[str], limit: int):
    """(uint8 images [N, C, S, S], labels [N] or None, source names) of --images at the model's size."""
    from pathlib import Path

    import numpy as np

    size = cfg.model.img_size
    if spec == "data":
        from jitkit.data import build_dataset

        ds = build_dataset(cfg.data.replace(img_size=size), split="val")
        n = len(ds) if limit <= 0 else min(limit, len(ds))
        # class-major data sets: spread the picks over the classes
        pick = np.linspace(0, len(ds) - 1, n).round().astype(int) if n < len(ds) else np.arange(n)
        items = [ds[int(i)] for i in pick]
        return (
            np.stack([np.asarray(x) for x, _ in items]),
            np.asarray([y for _, y in items]),
            [f"data:{i}" for i in pick],
        )
    from jitkit.eval.sample_folder import IMAGE_EXTS, list_images, load_images

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"--images {spec}: not found (expected a folder of images, an .npz or 'data')"
        )
    if path.is_dir():
        files, labels = list_images(path, exts=IMAGE_EXTS)
        if not files:
            raise ValueError(f"--images {spec}: no images ({', '.join(IMAGE_EXTS)}) in the folder")
        if limit > 0:
            files, labels = files[:limit], (None if labels is None else labels[:limit])
        from jitkit.data.crop import load_cropped

        return np.stack([load_cropped(f, size) for f in files]), labels, [str(f) for f in files]
    images, labels = load_images(path)
    if limit > 0:
        images, labels = images[:limit], (None if labels is None else labels[:limit])
    if images.shape[-1] != size:
        raise ValueError(
            f"--images {spec}: the images are {images.shape[-1]} px, the model makes {size} px; give a folder "
            "(it is center-cropped to the model's size) or an .npz of the right size"
        )
    return images, labels, [f"{path}:{i}" for i in range(len(images))]


def run_invert(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from jitkit.checkpoint import load_denoiser
    from jitkit.checkpoint.load import checkpoint_meta
    from jitkit.cli.flags import flag_error, local_checkpoint
    from jitkit.config import RunConfig
    from jitkit.diffusion.inversion import inversion_evaluations, invertible_method
    from jitkit.diffusion.sampling import sampling_cost
    from jitkit.eval.inversion import invert_images, reconstruction_error, reconstruction_study, save_noise
    from jitkit.runtime import resolve_device, resolve_precision
    from jitkit.train.memory_guard import check_sampling_memory

    if args.out is not None and Path(args.out).suffix.lower() != ".npz":
        raise ValueError(f"--out expects a .npz file name, found {args.out!r}")
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0, found {args.limit}")
    source, args.checkpoint = args.checkpoint, local_checkpoint(args.checkpoint)  # hf://: one download
    meta = checkpoint_meta(args.checkpoint)
    cfg = RunConfig.from_dict(meta["config"], strict=False)
    n_cls = cfg.model.num_classes
    names = list(meta.get("classes") or [])
    names = names if len(names) == n_cls else [str(i) for i in range(n_cls)]
    try:
        overrides = sampler_overrides(args)
        scfg = cfg.sampler.replace(**overrides)
        method = invertible_method(scfg.method)
        if "method" not in overrides and method != scfg.method:
            print(
                f"invert: the run samples with {scfg.method}, whose corrector cannot be inverted step by step; "
                f"inverting with {method} (recorded in the noise file, so that `jitkit sample --noise` "
                "regenerates with it)"
            )
            scfg = scfg.replace(method=method)
        study = [int(s) for s in args.study.split(",") if s.strip()] if args.study else []
        if any(s < 1 for s in study):
            raise ValueError(f"steps must be >= 1, found {args.study!r}")
        if args.iters < 1:
            raise ValueError(f"iters must be >= 1, found {args.iters}")
        if args.sweeps is not None and args.sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, found {args.sweeps}")
    except ValueError as e:
        raise flag_error(e, _FLAGS | {"steps": "study" if args.study else "steps"}) from e
    images, labels, sources = _read_images(args.images, cfg, names, args.limit)
    if args.class_ is not None:
        cls = parse_classes(args.class_, names)
        if len(cls) != 1:
            raise ValueError(f"--class takes one class name or index, found {args.class_!r}")
        labels = np.full(len(images), cls[0], dtype=np.int64)
    if labels is None:
        raise ValueError(
            f"--images {args.images}: the classes of the images are not known (no labels.csv); name them with "
            "--class NAME"
        )
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    # one batch's estimated peak (inversion runs the sampler's network evaluations) before the weights are read
    note = check_sampling_memory(
        cfg.model,
        min(args.batch_size, len(images)),
        precision=precision,
        device=device,
        guidance=scfg.cfg != 1.0,
    )
    if note:
        print(f"jitkit invert: memory: {note}", file=sys.stderr)
    denoiser, cfg, _ = load_denoiser(args.checkpoint, ema=args.ema, device=device)
    print(
        f"jitkit invert: {len(images)} images with {sampling_cost(scfg)} ({inversion_evaluations(scfg, args.iters, args.sweeps)} "
        f"network evaluations to invert, {args.iters} iterations per step) on {device}, precision {precision}",
        file=sys.stderr,
    )
    try:
        noise = invert_images(
            denoiser,
            images,
            labels,
            scfg,
            precision=precision,
            iters=args.iters,
            sweeps=args.sweeps,
            batch_size=args.batch_size,
        )
        err = reconstruction_error(
            denoiser, images, labels, noise, scfg, precision=precision, batch_size=args.batch_size
        )
        rows = (
            reconstruction_study(
                denoiser,
                images,
                labels,
                scfg,
                study,
                iters=args.iters,
                sweeps=args.sweeps,
                precision=precision,
                batch_size=args.batch_size,
                on_row=lambda r: print(
                    f"  steps {r['steps']:4d}: reconstruction RMS {r['rms']:.4f} ({r['mean_abs_u8']:.2f} levels), "
                    f"PSNR {r['psnr_db']:.1f} dB, noise std {r['noise_std']:.2f}",
                    file=sys.stderr,
                ),
            )
            if study
            else []
        )
    except ValueError as e:
        raise flag_error(e, _FLAGS) from e
    print(
        f"jitkit invert: reconstruction RMS {err['rms']:.4f} in [-1, 1] units ({err['mean_abs_u8']:.2f} uint8 levels "
        f"on average, PSNR {err['psnr_db']:.1f} dB); noise std {float(noise.std()):.2f} (1 for Gaussian noise)"
    )
    if args.out is not None:
        save_noise(args.out, noise, labels, names, scfg, sources)
        print(
            f"jitkit invert: wrote {args.out}; regenerate with: jitkit sample {source} --noise {args.out} --grid rec.png"
        )
    if args.json:
        from jitkit.fileio import atomic_write_text

        rec = {
            "sampler": scfg.to_dict(),
            "iters": args.iters,
            "n": len(images),
            "reconstruction": err,
            "study": rows,
        }
        atomic_write_text(args.json, json.dumps(rec, indent=2) + "\n")
    return 0


def noise_request(args: argparse.Namespace, cfg, names: list[str]):
    """For ``jitkit sample --noise FILE``: (noise [N, C, S, S], LabelPlan, sampler settings of the file).

    The labels are the file's, or ``--classes`` (one class for every image, or one per image); ``--num`` and
    ``--per-class`` do not apply (the file fixes the number of images).
    """
    import numpy as np

    from jitkit.eval.inversion import load_noise
    from jitkit.eval.sample_plan import LabelPlan

    if args.num is not None or args.per_class is not None:
        raise ValueError("--noise fixes the images (one per noise in the file): drop --num / --per-class")
    shape = (cfg.model.in_channels, cfg.model.img_size, cfg.model.img_size)
    nf = load_noise(args.noise, shape)
    n = len(nf.noise)
    labels = nf.labels
    if args.classes is not None:
        cls = parse_classes(args.classes, names)
        if len(cls) not in (1, n):
            raise ValueError(
                f"--classes with --noise: give one class (for all {n} images) or {n} classes, found {len(cls)}"
            )
        labels = np.full(n, cls[0], dtype=np.int64) if len(cls) == 1 else np.asarray(cls, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= cfg.model.num_classes):
        raise ValueError(
            f"--noise {args.noise}: labels must lie in [0, {cfg.model.num_classes - 1}] for this model, found "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    keys = ("method", "steps", "cfg", "interval", "time_grid")
    from_file = {k: (tuple(v) if k == "interval" else v) for k, v in (nf.sampler or {}).items() if k in keys}
    return nf.noise, LabelPlan.of(labels), from_file
