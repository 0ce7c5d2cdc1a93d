"""``jitkit sample``, ``jitkit eval``, ``jitkit ref-stats``, ``jitkit import``: generation and evaluation."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    _register_sample(sub)
    _register_eval(sub)
    _register_ref_stats(sub)
    _register_import(sub)


# -- jitkit sample ---------------------------------------------------------------------------------------


def _register_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate images from a run folder or checkpoint (grid PNG, sample folder or npz)",
        description=(
            "Generate images from a jitkit run folder (its latest checkpoint), a checkpoint folder or a file "
            "inside one. Sampler, steps, cfg and interval default to the checkpoint's config. Image i's noise "
            "depends only on (--seed, i): re-running into the same --out skips finished images, and under "
            "torchrun the images are split over the ranks."
        ),
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run folder, checkpoint folder or a file in one")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--per-class", type=int, default=None, help="images per class (default 4 for a grid)")
    what.add_argument("--num", type=int, default=None, help="total images, balanced over the classes")
    p.add_argument("--classes", default=None, help="comma-separated class indices or names (default: all)")
    p.add_argument("--sampler", choices=["heun", "euler"], default=None, help="default: the checkpoint's")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's)")
    p.add_argument(
        "--interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None, help="CFG interval in t"
    )
    p.add_argument("--ema", choices=["1", "2", "none"], default="1", help="which weights (default: EMA 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps (default: auto)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--grid", default=None, metavar="PNG", help="write a grid, one row per class")
    p.add_argument("--out", default=None, metavar="DIR", help="write 00000.png … + labels.csv (resumable)")
    p.add_argument("--npz", default=None, metavar="FILE", help="write uint8 images and labels to an .npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_sample)


def parse_classes(spec: str | None, classes: list[str]) -> list[int] | None:
    """``"0,3,7"`` or ``"red_circle,blue_square"`` (or a mix) → class indices."""
    if spec is None:
        return None
    out = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        if tok.lstrip("-").isdigit():
            out.append(int(tok))
        elif tok in classes:
            out.append(classes.index(tok))
        else:
            import difflib

            close = difflib.get_close_matches(tok, classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"--classes: {tok!r} is neither a class index nor a class name of this model{hint}; "
                f"it has {len(classes)} classes: {', '.join(classes[:8])}{' …' if len(classes) > 8 else ''}"
            )
    if not out:
        raise ValueError(f"--classes: no class given in {spec!r}")
    return out


def _init_distributed(device_arg: str):
    """(rank, world_size, device) under torchrun (process group for barriers), or (0, 1, device)."""
    from jitkit.eval.generate import dist_env, resolve_device

    rank, world = dist_env()
    if world <= 1:
        return 0, 1, resolve_device(device_arg)
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device_arg)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jitkit.checkpoint import load_denoiser
    from jitkit.eval.generate import balanced_labels, sample_to_outputs, sampling_cost

    if args.grid is None and args.out is None and args.npz is None:
        raise ValueError("choose an output: --grid FILE.png, --out DIR or --npz FILE.npz")
    rank, world, device = _init_distributed(args.device)
    denoiser, cfg, classes = load_denoiser(args.checkpoint, ema=args.ema, device=device)
    scfg = cfg.sampler
    upd = {}
    if args.sampler is not None:
        upd["method"] = args.sampler
    if args.steps is not None:
        upd["steps"] = args.steps
    if args.cfg is not None:
        upd["cfg"] = args.cfg
    if args.interval is not None:
        upd["interval"] = tuple(args.interval)
    scfg = scfg.replace(**upd) if upd else scfg
    num_classes = cfg.model.num_classes
    names = list(classes) if classes else [str(i) for i in range(num_classes)]
    per_class = args.per_class
    if per_class is None and args.num is None:
        per_class = 4 if (args.out is None and args.npz is None) else 1
    labels = balanced_labels(
        num_classes, classes=parse_classes(args.classes, names), per_class=per_class, num=args.num
    )
    if rank == 0:
        print(
            f"jitkit sample: {len(labels)} images from {args.checkpoint} ({cfg.model.name}, {cfg.model.img_size}px, "
            f"EMA {args.ema}) on {device}{f' x {world} ranks' if world > 1 else ''}; {sampling_cost(scfg)}, "
            f"interval {list(scfg.interval)}, seed {args.seed}",
            file=sys.stderr,
        )
    meta = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "ema": args.ema,
        "sampler": scfg.to_dict(),
        "seed": args.seed,
        "precision": args.precision,
    }
    summary = sample_to_outputs(
        denoiser,
        labels,
        scfg,
        names,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        out_dir=args.out,
        npz=args.npz,
        grid=args.grid,
        rank=rank,
        world_size=world,
        progress=not args.no_progress and rank == 0,
        precision=args.precision,
        meta=meta,
    )
    if rank == 0:
        parts = []
        if summary.get("skipped"):
            parts.append(f"skipped {summary['skipped']} already written")
        for key in ("out", "npz", "grid"):
            if key in summary:
                parts.append(f"{key}: {summary[key]}")
        print(f"jitkit sample: generated {summary['generated']} images; " + "; ".join(parts), file=sys.stderr)
    return 0


# -- jitkit eval / ref-stats / import: filled in below ----------------------------------------------------


def _register_eval(sub: argparse._SubParsersAction) -> None:
    return None


def _register_ref_stats(sub: argparse._SubParsersAction) -> None:
    return None


def _register_import(sub: argparse._SubParsersAction) -> None:
    return None
