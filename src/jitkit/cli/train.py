"""``jitkit train``: preset ← YAML ← command line → one call of :func:`jitkit.train.train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Every flag named after a config field sets it (``--epochs`` → train.epochs, resolved by RunConfig.nest);
# these are not (dest → dotted key). --img-size sets model.img_size and data.img_size; --batch-size may be "auto".
_RENAMES = {"model": "model.name", "seed": "train.seed"}
_SPECIAL = {"img_size", "batch_size"}


def register(sub: argparse._SubParsersAction) -> None:
    from jitkit.config import PRESETS

    p = sub.add_parser(
        "train",
        help="train a JiT (no arguments: the 'shapes' preset on this machine, a few minutes on a CPU)",
        description=(
            "Train a JiT. Settings are layered: the preset (default 'shapes'), then --config YAML, then the "
            "flags and --set KEY=VALUE overrides (dotted like train.blr or bare like blr). The resolved "
            "config is printed and saved as RUN/config.json. Under torchrun the same command runs DDP "
            "(gloo on CPU, NCCL on CUDA). With --resume the checkpoint's config is used and only what you "
            "give explicitly overrides it."
        ),
    )
    p.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default: shapes)")
    p.add_argument(
        "--config", default=None, metavar="YAML", help="a YAML file with model/diffusion/…/train sections"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.blr=1e-4 --set depth=6 (repeatable)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides, same as --set")
    p.add_argument("--model", default=None, help="registered model name, e.g. JiT-S/4 (see jitkit models)")
    p.add_argument("--img-size", type=int, default=None, help="image size (model and data)")
    p.add_argument("--data", default=None, help="'shapes', an image folder or a cache from jitkit prepare")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument(
        "--batch-size",
        default=None,
        help="micro-batch per process, or 'auto' (jitkit plan picks micro-batch and accumulation)",
    )
    p.add_argument("--global-batch", type=int, default=None, help="effective batch (derives accumulation)")
    p.add_argument("--accum-steps", type=int, default=None)
    p.add_argument("--blr", type=float, default=None, help="base LR; lr = blr × effective batch / 256")
    p.add_argument("--lr", type=float, default=None, help="absolute LR (overrides the blr rule)")
    p.add_argument("--out", default=None, help="run folder (default from the preset, e.g. runs/shapes)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (-1: sized from the host)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (0: one per core)")
    p.add_argument("--sample-every", type=int, default=None, help="write a sample grid every N steps")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint every N steps (0: every epoch)")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument(
        "--resume", default=None, metavar="auto|PATH", help="continue a run ('auto': the latest under --out)"
    )
    p.add_argument("--fsdp", action="store_true", default=None, help="shard with FSDP2 under torchrun")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile each block (on in the ImageNet presets where a compiler exists; off for shapes)",
    )
    p.add_argument("--grad-checkpoint", action="store_true", default=None, help="activation checkpointing")
    p.add_argument("--no-eval", action="store_true", help="skip the end-of-run evaluation (shapes metric)")
    p.add_argument(
        "--eval-ref", default=None, metavar="NPZ", help="reference statistics for FID during training"
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_train)


def _parse_kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"override {it!r}: expected KEY=VALUE (e.g. train.blr=1e-4 or epochs=10)")
        k, v = it.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if not k:
            raise ValueError(f"override {it!r}: empty key")
        out[k] = _yaml_value(v)
    return out


def _yaml_value(v: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(v) if v.strip() else v
    except yaml.YAMLError:
        return v


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the user set on the command line or in --config, as a nested dict (no preset defaults)."""
    import yaml

    from jitkit.config import RunConfig, merge_dicts

    sections = RunConfig.SECTIONS
    nested: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file (expected a YAML file)")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"--config {path}: expected a mapping of sections, found {type(loaded).__name__}"
            )
        preset = loaded.pop("preset", None)
        if preset and not args.preset:
            args.preset = preset
        flat = {k: v for k, v in loaded.items() if not isinstance(v, dict)}
        for sec, vals in loaded.items():
            if isinstance(vals, dict):
                if sec not in sections:
                    raise ValueError(
                        f"--config {path}: unknown section {sec!r}; valid sections: {', '.join(sections)}"
                    )
                for k, v in vals.items():
                    flat[f"{sec}.{k}"] = v
        nested = merge_dicts(nested, RunConfig.nest(flat))
    from jitkit.cli.flags import given_flags

    fields = {n for sec in sections for n in type(getattr(RunConfig(), sec)).field_names()}
    flat = given_flags(args, fields - _SPECIAL - {"seed"}, _RENAMES)
    if args.img_size is not None:
        flat["model.img_size"] = flat["data.img_size"] = args.img_size
    if args.batch_size is not None and str(args.batch_size).lower() != "auto":
        try:
            flat["train.batch_size"] = int(args.batch_size)
        except ValueError as e:
            raise ValueError(
                f"--batch-size: expected a positive integer or 'auto', found {args.batch_size!r}"
            ) from e
    flat.update(_parse_kv(list(args.sets) + list(args.overrides)))
    return merge_dicts(nested, RunConfig.nest(flat))


def build_config(args: argparse.Namespace):
    """(RunConfig, checkpoint folder to resume from or None, notes to print) from the parsed arguments.

    With ``--resume`` the checkpoint's config is used and only what was given explicitly (flags, ``--set``,
    ``--config``, an explicit ``--preset``) overrides it; the model cannot change.
    """
    from jitkit.config import ConfigError, merge_dicts, preset_dict, resolve_run_config, resume_config
    from jitkit.train.run_folder import checkpoint_config, resolve_resume

    explicit = explicit_overrides(args)
    notes: list[str] = []
    # data image size follows the model unless given
    if "img_size" in explicit.get("model", {}) and "img_size" not in explicit.get("data", {}):
        explicit.setdefault("data", {})["img_size"] = explicit["model"]["img_size"]
    fresh = resolve_run_config(merge_dicts(preset_dict(args.preset or "shapes"), explicit))
    if fresh.data.img_size != fresh.model.img_size and "img_size" not in explicit.get("data", {}):
        fresh = fresh.override({"data.img_size": fresh.model.img_size})
    if not args.resume:
        return fresh, None, notes
    try:
        ckpt, note = resolve_resume(args.resume, fresh.train.out)
    except (ValueError, FileNotFoundError) as e:  # not a checkpoint: say which flag named it
        raise ValueError(f"--resume {args.resume}: {e}") from e
    if ckpt is None:
        notes.append(f"--resume {args.resume}: {note}")
        return fresh, None, notes
    layered = merge_dicts(preset_dict(args.preset), explicit) if args.preset else explicit
    try:
        cfg, changed = resume_config(checkpoint_config(ckpt), layered)
    except ConfigError as e:  # the model options on the command line differ from the checkpoint's
        raise ConfigError(f"--resume {ckpt}: {e}") from e
    if changed:
        notes.append("resuming with explicit changes to the checkpoint's config: " + "; ".join(changed))
    return cfg, str(ckpt), notes


def format_config(cfg) -> str:
    lines = []
    for sec, vals in cfg.to_dict().items():
        items = ", ".join(f"{k}={v}" for k, v in vals.items())
        lines.append(f"  {sec}: {items}")
    return "\n".join(lines)


def _calm_openmp_on_busy_hosts() -> str | None:
    """On a CPU host that is already busy (1-min load ≥ cores), make OpenMP threads sleep instead of spin.

    Spinning worker threads of several processes starve each other (measured: docs/train.md). Must run before
    torch is imported; an explicit OMP_WAIT_POLICY is left alone.
    """
    import os

    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = os.cpu_count() or 1
    if load >= cpus:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return f"host is busy (load {load:.1f} on {cpus} CPUs): OMP_WAIT_POLICY=PASSIVE"
    return None


def run_train(args: argparse.Namespace) -> int:
    calm = _calm_openmp_on_busy_hosts()
    from jitkit.runtime.dist import env_world

    cfg, resume, notes = build_config(args)
    if calm:
        notes.append(calm)
    rank, world, _ = env_world()
    if args.batch_size is not None and str(args.batch_size).lower() == "auto":
        from jitkit.train.planner import auto_batch

        cfg, plan = auto_batch(cfg, world)
        notes.append("--batch-size auto:\n" + plan.render())
    main = rank == 0
    if main:
        for n in notes:
            print(f"[jitkit] {n}")
        print("[jitkit] config:\n" + format_config(cfg), flush=True)
    if args.dry_run:
        return 0

    import torch  # noqa: F401  (after the cheap checks above)

    from jitkit.checkpoint import DiskFullError
    from jitkit.train import NonFiniteLossError, train

    callbacks = []
    if not args.no_eval:
        from jitkit.cli.flags import flag_error
        from jitkit.eval.hooks import make_eval_callbacks

        try:
            callbacks = make_eval_callbacks(cfg, ref_stats=args.eval_ref)
        except ValueError as e:
            raise flag_error(e, {"ref_stats": "eval_ref"}) from e
        for cb in callbacks:
            if hasattr(cb, "progress"):
                cb.progress = not args.no_progress
    try:
        run_dir = train(cfg, resume=resume, callbacks=callbacks, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(
            f"jitkit train: error: {e}\n  (on the command line: --set train.blr=…, --set train.grad_clip=1.0 "
            "or --precision fp32, then --resume auto)",
            file=sys.stderr,
        )
        return 3
    except DiskFullError as e:
        print(
            f"jitkit train: error: {e.strerror or e}\n  (on the command line: --out elsewhere, or free space "
            "and --resume auto)",
            file=sys.stderr,
        )
        return 4
    finally:
        from jitkit.runtime import dist

        dist.cleanup()
    if main:
        print(f"[jitkit] run folder: {run_dir}")
    return 0
