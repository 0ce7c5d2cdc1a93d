"""``jitkit sample``, ``jitkit eval``, ``jitkit ref-stats``, ``jitkit import``: generation and evaluation."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    _register_sample(sub)
    _register_import(sub)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # jitkit.runtime.PRECISIONS, without importing torch for --help


def add_device_args(p: argparse.ArgumentParser, *, precision: bool = True) -> None:
    """``--device`` and (with ``precision``) ``--precision``, alike for every command that runs a model."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps (default: auto)")
    if precision:
        p.add_argument(
            "--precision",
            choices=PRECISIONS,
            default="auto",
            help="auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16 (default: auto)",
        )


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """``--sampler --steps --cfg --interval --time-grid``, each defaulting to the checkpoint's sampler config
    (the same names as the config's ``sampler`` section and ``jitkit.config.SAMPLERS`` / ``GRIDS``)."""
    from jitkit.config.schema import GRIDS, SAMPLERS  # config never imports torch: --help stays instant

    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="solver (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's)")
    p.add_argument(
        "--interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None, help="CFG interval in t"
    )
    p.add_argument(
        "--time-grid",
        choices=GRIDS,
        default=None,
        help="where the steps go in t: uniform (k/K, the reference), logsnr, edm (default: the checkpoint's)",
    )


def sampler_overrides(args: argparse.Namespace) -> dict:
    """The sampler-config fields the flags of :func:`add_sampler_args` set (those given)."""
    from jitkit.cli.flags import given_flags

    upd = given_flags(args, ("steps", "cfg", "time_grid"), {"sampler": "method"})
    if getattr(args, "interval", None) is not None:
        upd["interval"] = tuple(args.interval)
    return upd


# -- jitkit sample ---------------------------------------------------------------------------------------

# `--compile auto` compiles on a CPU from this much network work on. Sampling compiles the whole network frozen
# (JiT.compile_blocks(freeze=True)): JiT-B/16 takes about 26 s per batch size with a cold inductor cache and 15 s
# warm on 2 cores, and guidance needs two batch sizes (B and 2B images); the compiled bf16 sampler then runs
# about 1.75x the eager one (benchmarks/README.md), so it pays back from about 100 s of eager sampling, some
# 100 TFLOP of network work at the eager rate measured there.
COMPILE_AUTO_TFLOP = 100.0


def sample_compile(setting: str, device, model_cfg, sampler_cfg, images: int) -> tuple[bool, str]:
    """Whether ``jitkit sample --compile SETTING`` compiles the network, and why (one line for the log).

    ``on`` compiles where inductor can (an error naming what is missing elsewhere); ``auto`` compiles only on
    a CPU with a C++ compiler and only when the job's network work (``images``, those of this process, x
    evaluations x 2 under guidance x forward FLOPs) reaches :data:`COMPILE_AUTO_TFLOP`; GPUs stay eager under ``auto`` (their compile time
    rarely pays back on a sampling job: pass ``on``). ``off`` never compiles.
    """
    from jitkit.bench.flops import flops_per_image
    from jitkit.diffusion.sampling import network_evaluations
    from jitkit.models.registry import compiler_available

    if setting not in ("auto", "on", "off"):
        raise ValueError(f"compile must be auto, on or off, found {setting!r}")
    if setting == "off":
        return False, "compile off"
    ok, why = compiler_available(device)
    if setting == "on":
        if not ok:
            raise ValueError(f"compile=on, but torch.compile cannot run here: {why}")
        return True, "compile on"
    kind = getattr(device, "type", str(device))
    if kind != "cpu":
        return False, f"compile auto: eager on {kind} (pass --compile on to compile)"
    if not ok:
        return False, f"compile auto: eager ({why})"
    guided = 2 if sampler_cfg.cfg != 1.0 else 1
    work = images * network_evaluations(sampler_cfg) * guided * flops_per_image(model_cfg)["forward"] / 1e12
    if work < COMPILE_AUTO_TFLOP:
        return False, f"compile auto: eager ({work:.1f} TFLOP of network work < {COMPILE_AUTO_TFLOP:.0f})"
    return True, f"compile auto: compiled ({work:.0f} TFLOP of network work >= {COMPILE_AUTO_TFLOP:.0f})"


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
    add_sampler_args(p)
    p.add_argument(
        "--noise",
        default=None,
        metavar="NPZ",
        help="start from this noise (jitkit invert's output) instead of --seed's; its labels and sampler "
        "settings are the defaults (--classes changes the class)",
    )
    p.add_argument("--ema", choices=["1", "2", "none"], default="1", help="which weights (default: EMA 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the network's blocks: auto compiles on a CPU when the job's network work is at "
        f"least {COMPILE_AUTO_TFLOP:.0f} TFLOP (compiling takes 15-60 s; compiled sampling runs about 1.75x "
        "faster), on | off (default: auto)",
    )
    add_device_args(p)
    p.add_argument("--grid", default=None, metavar="PNG", help="write a grid, one row per class")
    p.add_argument("--out", default=None, metavar="DIR", help="write 00000.png … + labels.csv (resumable)")
    p.add_argument("--npz", default=None, metavar="FILE", help="write uint8 images and labels to an .npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_sample)


def parse_classes(spec: str | None, classes: list[str]) -> list[int] | None:
    """``"0,3,7"`` or ``"red_circle,blue_square"`` (or a mix) → class indices. A token that is a class name
    means that class (folders named ``"0"``, ``"10"``, … sort as text: name ``"10"`` is index 2), else a
    number is an index."""
    if spec is None:
        return None
    out = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        if tok in classes:
            out.append(classes.index(tok))
        elif tok.lstrip("-").isdigit():
            if not 0 <= int(tok) < len(classes):
                raise ValueError(
                    f"--classes: {tok} is not a class of this model: expected an index in [0, {len(classes) - 1}] "
                    f"or a class name"
                )
            out.append(int(tok))
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
    """(rank, world_size, device): under torchrun joins the process group (gloo on CPU, NCCL on CUDA, each rank
    on its local GPU) through jitkit.runtime.dist; otherwise (0, 1, device)."""
    from jitkit.runtime import dist, resolve_device, set_tf32

    info = dist.init(resolve_device(device_arg))
    set_tf32(info.device, True)  # float32 sampling on Ampere+ GPUs: TF32 products (a no-op elsewhere)
    return info.rank, info.world_size, info.device


def _check_outputs(args: argparse.Namespace) -> None:
    """The output flags, checked before any model is loaded or image made."""
    from pathlib import Path

    if args.grid is None and args.out is None and args.npz is None:
        raise ValueError("choose an output: --grid FILE.png, --out DIR or --npz FILE.npz")
    for flag, name, ext in (("--grid", args.grid, ".png"), ("--npz", args.npz, ".npz")):
        if name is None:
            continue
        if Path(name).is_dir():
            raise IsADirectoryError(f"{flag} {name} is a folder; expected a {ext} file name")
        if Path(name).suffix.lower() != ext:
            raise ValueError(f"{flag} expects a {ext} file name, found {name!r}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"--out expects a folder, found a file: {args.out}")


def run_sample(args: argparse.Namespace) -> int:
    _check_outputs(args)
    rank, world, device = _init_distributed(args.device)
    try:
        return _sample(args, rank, world, device)
    finally:
        from jitkit.runtime import dist

        dist.cleanup()


def _sample(args: argparse.Namespace, rank: int, world: int, device) -> int:
    from pathlib import Path

    from jitkit.checkpoint import load_denoiser
    from jitkit.checkpoint.load import checkpoint_meta
    from jitkit.cli.flags import flag_error, local_checkpoint
    from jitkit.config import RunConfig
    from jitkit.diffusion.generate import cast_for_inference
    from jitkit.diffusion.sampling import sampling_cost
    from jitkit.eval.sample_folder import rank_range, sample_to_outputs
    from jitkit.eval.sample_plan import LabelPlan, check_outputs_fit
    from jitkit.models.registry import precision_for_model
    from jitkit.runtime import dist
    from jitkit.train.memory_guard import agreed, check_sampling_memory

    # library errors name parameters; these are the flags that set them
    flags = {
        p: p for p in ("steps", "cfg", "interval", "sampler", "num", "per_class", "batch_size", "npz", "grid")
    }
    flags["out_dir"] = "out"
    flags["compile"] = "compile"
    # the plan and its outputs are checked from the checkpoint's meta.json, before any weight is read: the
    # labels are a LabelPlan (a few numbers per class, whatever --num is), an npz/grid that cannot fit in memory
    # is refused here
    source, args.checkpoint = args.checkpoint, local_checkpoint(args.checkpoint)  # hf://: one download
    meta0 = checkpoint_meta(args.checkpoint)
    cfg = RunConfig.from_dict(meta0["config"], strict=False)
    num_classes = cfg.model.num_classes
    classes = meta0.get("classes") or []
    names = list(classes) if len(classes) == num_classes else [str(i) for i in range(num_classes)]
    per_class = args.per_class
    if per_class is None and args.num is None:
        per_class = 4 if (args.out is None and args.npz is None) else 1
    try:
        if args.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {args.batch_size}")
        plan = LabelPlan.balanced(
            num_classes, classes=parse_classes(args.classes, names), per_class=per_class, num=args.num
        )
        shape = (cfg.model.in_channels, cfg.model.img_size, cfg.model.img_size)
        check_outputs_fit(plan, shape, npz=args.npz, grid=args.grid)
        upd = {}
        if args.sampler is not None:
            upd["method"] = args.sampler
        if args.steps is not None:
            upd["steps"] = args.steps
        if args.cfg is not None:
            upd["cfg"] = args.cfg
        if args.interval is not None:
            upd["interval"] = tuple(args.interval)
        if args.time_grid is not None:
            upd["time_grid"] = args.time_grid
        noise = None
        if args.noise is not None:  # jitkit invert's noise: its labels and sampler settings are the defaults
            from jitkit.cli.invert import noise_request

            noise, plan, from_file = noise_request(args, cfg, names)
            upd = {**from_file, **upd}
        scfg = cfg.sampler.replace(**upd) if upd else cfg.sampler  # values checked (finite cfg, …) here
    except ValueError as e:
        raise flag_error(e, flags) from e

    # the images one batch holds at most (a batch larger than a rank's share is never made), and the estimated
    # peak of sampling it against the free memory, before the weights are read (they are part of it)
    batch = min(args.batch_size, len(rank_range(len(plan), 0, world)))
    note = agreed(
        lambda free: check_sampling_memory(
            cfg.model,
            batch,
            precision=args.precision,
            device=device,
            guidance=scfg.cfg != 1.0,
            processes_on_host=dist.local_world_size(),
            free=free,
        ),
        device,
    )
    if note and rank == 0:
        print(f"jitkit sample: memory: {note}", file=sys.stderr)
    denoiser, cfg, classes = load_denoiser(args.checkpoint, ema=args.ema, device=device)
    # auto: measured for this model and batch (two forwards per step under CFG), one decision for all ranks
    precision, _ = dist.broadcast_object(precision_for_model(args.precision, device, cfg.model, 2 * batch))
    cast_for_inference(denoiser, precision)  # half-precision weights when sampling in half precision
    try:
        # each rank compiles for its own share of the images; all decide on the largest share (rank 0's), so
        # that every rank decides alike
        share = len(rank_range(len(plan), 0, world))
        compiled, compile_note = sample_compile(args.compile, device, cfg.model, scfg, share)
    except ValueError as e:
        raise flag_error(e, flags) from e
    if compiled:
        denoiser.net.compile_blocks(freeze=True)  # in place; compiled on the first batch of each size
    if rank == 0:
        print(
            f"jitkit sample: {len(plan)} images from {source} ({cfg.model.name}, {cfg.model.img_size}px, "
            f"EMA {args.ema}) on {device}{f' x {world} ranks' if world > 1 else ''}; {sampling_cost(scfg)}, "
            f"interval {list(scfg.interval)}, seed {args.seed}, precision {precision}, {compile_note}",
            file=sys.stderr,
        )
    meta = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "ema": args.ema,
        "sampler": scfg.to_dict(),
        "seed": args.seed,
        # what ran (auto resolved on this device), so that a folder resumes under auto or its explicit name
        "precision": precision,
    }
    if noise is not None:
        from jitkit.eval.inversion import noise_digest

        meta["noise"] = noise_digest(noise)
    try:
        summary = sample_to_outputs(
            denoiser,
            plan,
            scfg,
            names,
            seed=args.seed,
            batch_size=args.batch_size,
            out_dir=args.out,
            npz=args.npz,
            grid=args.grid,
            rank=rank,
            world_size=world,
            progress=not args.no_progress and rank == 0,
            precision=precision,
            meta=meta,
            noise=noise,
        )
    except ValueError as e:
        raise flag_error(e, flags) from e
    if rank == 0:
        parts = []
        if summary.get("skipped"):
            parts.append(f"skipped {summary['skipped']} already written")
        for key in ("out", "npz", "grid"):
            if key in summary:
                parts.append(f"{key}: {summary[key]}")
        print(f"jitkit sample: generated {summary['generated']} images; " + "; ".join(parts), file=sys.stderr)
    return 0


# -- jitkit import --------------------------------------------------------------------------------------


def _register_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert a JiT reference checkpoint (checkpoint-last.pth) or a diffusers folder into a run folder",
        description=(
            "Read a checkpoint of the JiT reference code without executing pickled code (tensors and "
            "argparse.Namespace only), infer the model/diffusion/sampler config from its args, check it against "
            "the tensor shapes, and write a jitkit run folder usable by jitkit sample / eval / train --resume. "
            "A folder holding model_index.json or transformer/config.json (a diffusers-style JiT: jitkit export's "
            "or the JiT-diffusers port's) is read instead from its JSON configs and safetensors weights."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_PTH_OR_DIR")
    p.add_argument("--out", required=True, metavar="RUN", help="new run folder")
    p.add_argument("--classes", default=None, metavar="FILE", help="class names: JSON list or one per line")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    import json

    from jitkit.checkpoint.diffusers import import_diffusers, is_diffusers_folder
    from jitkit.checkpoint.reference import import_reference
    from jitkit.cli.flags import checked_out
    from jitkit.config import RunConfig

    out = checked_out(args)
    if is_diffusers_folder(args.checkpoint):
        out = import_diffusers(args.checkpoint, out, classes=args.classes, overwrite=args.overwrite)
    else:
        out = import_reference(args.checkpoint, out, classes=args.classes, overwrite=args.overwrite)
    cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    m, s = cfg.model, cfg.sampler
    print(
        f"jitkit import: wrote {out} ({m.name}, {m.img_size}px, {m.num_classes} classes; sampler {s.method} "
        f"{s.steps} steps, cfg {s.cfg}, interval {list(s.interval)}). Try: jitkit sample {out} --grid grid.png"
    )
    return 0
