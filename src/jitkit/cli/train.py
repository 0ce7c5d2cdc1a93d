"""``jitkit train``: preset ← YAML ← command line → one call of :func:`jitkit.train.train`."""

from __future__ import annotations

import argparse
import signal
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
        help="train a JiT (no arguments: the 'shapes' preset on this machine, about a minute on 2 CPU cores)",
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
    p.add_argument(
        "--data",
        default=None,
        help="'shapes', an image folder (PATH/<class>/*, PATH/train/<class>/* or one folder: one class), a "
        "cache from jitkit prepare, or WebDataset shards (their folder, a brace pattern, http(s):// or "
        "file:// URLs of either, or a .txt list); the class count and names come from it",
    )
    p.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random left-right flips (default: on for the ImageNet presets and the shapes data, else off)",
    )
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
        "--log",
        default=None,
        metavar="SINKS",
        help="where the training scalars and sample grids go besides RUN/log.jsonl: tensorboard (RUN/tb, the "
        "default, when the package is installed), wandb (Weights & Biases, pip install 'jitkit[wandb]'), "
        "both joined by a comma, or none; kept in the run's config (a resume continues the wandb run)",
    )
    p.add_argument(
        "--resume", default=None, metavar="auto|PATH", help="continue a run ('auto': the latest under --out)"
    )
    p.add_argument("--fsdp", action="store_true", default=None, help="shard with FSDP2 under torchrun")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile each block (on in the ImageNet presets where a compiler exists; off for shapes; "
        "--set train.compile_scope=model compiles the whole forward as one graph: faster steps, a longer first compile)",
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


def _load_yaml(path: Path) -> Any:
    """The contents of the --config file; a file that is not YAML is reported with its line and column."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--config {path}: expected a UTF-8 YAML text file, found a byte that is not UTF-8 at offset {e.start}"
        ) from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        raise ValueError(
            f"--config {path}: invalid YAML{where}: {what or str(e).splitlines()[0]}. Expected sections of "
            f"key: value lines (e.g. 'train:' then '  epochs: 10', indented with spaces)"
        ) from e


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the user set on the command line or in --config, as a nested dict (no preset defaults)."""
    from jitkit.config import RunConfig, merge_dicts

    sections = RunConfig.SECTIONS
    nested: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file (expected a YAML file)")
        loaded = _load_yaml(path) or {}
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
    """(RunConfig, what to resume from, notes to print) from the parsed arguments.

    A fresh run takes the class count from its data, and trains one folder of images (one class)
    unconditionally, unless those settings were given (:func:`fit_to_data`). With ``--resume`` the
    checkpoint's config is used and only what was given explicitly (flags, ``--set``, ``--config``, an
    explicit ``--preset``) overrides it; the model cannot change. The second value is the checkpoint folder,
    ``"auto"`` when ``--resume auto`` starts again a run that stopped before its first checkpoint (with that
    run's config.json), or None.
    """
    from jitkit.config import ConfigError, merge_dicts, preset_dict, resolve_run_config, resume_config
    from jitkit.train.run_folder import checkpoint_config, resolve_resume, restart_run, saved_run_config

    explicit = explicit_overrides(args)
    notes: list[str] = []
    # data image size follows the model unless given
    if "img_size" in explicit.get("model", {}) and "img_size" not in explicit.get("data", {}):
        explicit.setdefault("data", {})["img_size"] = explicit["model"]["img_size"]
    preset = args.preset or "shapes"
    try:
        fresh = resolve_run_config(merge_dicts(preset_dict(preset), explicit))
    except ConfigError as e:
        if args.model and str(e).startswith("unknown model"):
            raise ConfigError(f"--model {args.model}: {e} (see jitkit models)") from e
        raise
    if fresh.data.img_size != fresh.model.img_size and "img_size" not in explicit.get("data", {}):
        fresh = fresh.override({"data.img_size": fresh.model.img_size})
    if not args.resume:
        return fit_to_data(fresh, explicit, preset, notes, dry_run=args.dry_run), None, notes
    try:
        ckpt, note = resolve_resume(args.resume, fresh.train.out)
    except (ValueError, FileNotFoundError) as e:  # not a checkpoint: say which flag named it
        raise ValueError(f"--resume {args.resume}: {e}") from e
    layered = merge_dicts(preset_dict(args.preset), explicit) if args.preset else explicit
    if ckpt is None:
        restart = restart_run(args.resume, fresh.train.out)
        if restart is None:
            notes.append(f"--resume {args.resume}: {note}")
            return fit_to_data(fresh, explicit, preset, notes, dry_run=args.dry_run), None, notes
        try:  # the run's own config (e.g. its ckpt_every), as from a checkpoint
            cfg, changed = resume_config(saved_run_config(restart), layered)
        except ConfigError as e:
            raise ConfigError(f"--resume {args.resume}: {restart} (no checkpoint yet): {e}") from e
        if changed:
            notes.append("starting again with explicit changes to the run's config: " + "; ".join(changed))
        return cfg, "auto", notes
    try:
        cfg, changed = resume_config(checkpoint_config(ckpt), layered)
    except ConfigError as e:  # the model options on the command line differ from the checkpoint's
        raise ConfigError(f"--resume {ckpt}: {e}") from e
    if changed:
        notes.append("resuming with explicit changes to the checkpoint's config: " + "; ".join(changed))
    return cfg, str(ckpt), notes


def fit_to_data(cfg, explicit: dict[str, Any], preset: str, notes: list[str], *, dry_run: bool = False):
    """``cfg`` with what the data decides, unless set explicitly (``explicit``: the nested settings given on
    the command line or in --config); each decision is added to ``notes``.

    * the class count: the data's (a folder's class folders, a cache's classes, the shapes' 16);
    * one class (a folder of images without class folders): unconditional training, sampler.cfg 1 and
      diffusion.label_drop_prob 0 (guidance and label drop need a class to guide by);
    * flips: the shapes preset's flips hold for the shapes data only; other data under it get none.

    Data that does not exist is an error, except for a dry run (which shows the preset's config with a note).
    """
    from jitkit.data import data_classes
    from jitkit.data.folder import printable

    data, given = cfg.data, {s: explicit.get(s, {}) for s in ("model", "diffusion", "sampler", "data")}
    updates: dict[str, Any] = {}
    own = data.data.strip().lower() != "shapes"
    if own and preset == "shapes" and "hflip" not in given["data"]:
        updates["data.hflip"] = False
    try:
        classes = data_classes(data)
    except FileNotFoundError as e:
        if not dry_run:
            raise
        notes.append(f"{e} (dry run: the class count is the preset's)")
        classes = None
    if classes is not None:
        n, where = len(classes), printable(data.data)
        shown = ", ".join(printable(c) for c in classes[:5]) + (", …" if n > 5 else "")
        if "num_classes" in given["model"] and cfg.model.num_classes != n:
            raise ValueError(
                f"model.num_classes={cfg.model.num_classes} was set, but the data {where} has {n} "
                f"class{'es' if n != 1 else ''} ({shown}); drop the setting to take the count from the data"
            )
        if cfg.model.num_classes != n:
            updates["model.num_classes"] = n
        if n == 1:
            if "cfg" not in given["sampler"]:
                updates["sampler.cfg"] = 1.0
            if "label_drop_prob" not in given["diffusion"]:
                updates["diffusion.label_drop_prob"] = 0.0
    cfg = cfg.override(updates) if updates else cfg
    if classes is not None and own:
        if n == 1:
            notes.append(
                f"data {where}: one folder of images, no class folders: one class, trained unconditionally "
                f"(model.num_classes=1, sampler.cfg={cfg.sampler.cfg:g}, diffusion.label_drop_prob="
                f"{cfg.diffusion.label_drop_prob:g}); for a class-conditional model put the images in "
                f"class folders (PATH/<class>/*)"
            )
        else:
            how = "as set" if "num_classes" in given["model"] else "from the data"
            notes.append(f"data {where}: {n} classes ({shown}): model.num_classes={n} ({how})")
        notes.append(
            f"data: images center-cropped to {data.img_size}px (the ADM crop; --img-size changes it with the "
            f"model); random left-right flips {'on' if cfg.data.hflip else 'off'} "
            f"({'--no-hflip' if cfg.data.hflip else '--hflip'} to turn them {'off' if cfg.data.hflip else 'on'})"
        )
    return cfg


def format_config(cfg) -> str:
    from jitkit.data.folder import printable

    lines = []
    for sec, vals in cfg.to_dict().items():
        items = ", ".join(f"{k}={printable(str(v))}" for k, v in vals.items())  # any bytes in a path
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
    from jitkit.cli.flags import flag_error
    from jitkit.config import ConfigError, RunConfig
    from jitkit.runtime.dist import env_world

    try:
        cfg, resume, notes = build_config(args)
    except ConfigError as e:  # a config value that cannot work: named by the flag that sets it
        fields = {n for sec in RunConfig.SECTIONS for n in type(getattr(RunConfig(), sec)).field_names()}
        raise flag_error(e, {f: f for f in fields if f in vars(args)}) from e
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

    from jitkit.train.tracking import require_sinks

    try:
        require_sinks(cfg.train.log_sinks)  # a missing wandb, said before any work
    except ConfigError as e:
        raise flag_error(e, {"log": "log"}) from e

    from jitkit.checkpoint import DiskFullError
    from jitkit.train import NonFiniteLossError, train
    from jitkit.train.signals import SignalFlag

    callbacks = []
    if not args.no_eval:
        from jitkit.eval.hooks import make_eval_callbacks

        try:
            callbacks = make_eval_callbacks(cfg, ref_stats=args.eval_ref)
        except ValueError as e:
            raise flag_error(e, {"ref_stats": "eval_ref"}) from e
        for cb in callbacks:
            if hasattr(cb, "progress"):
                cb.progress = not args.no_progress
    stop = SignalFlag()  # a first SIGINT/SIGTERM saves and returns; tells us afterwards that it happened
    try:
        run_dir = train(cfg, resume=resume, callbacks=callbacks, progress=not args.no_progress, signals=stop)
    except KeyboardInterrupt:  # Ctrl-C before the run's handler was installed, or a second signal
        again = f" by a second {stop.name}, without saving" if stop.signum is not None else ""
        print(f"jitkit train: interrupted{again}", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
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
    if stop.signum is not None:  # saved, but not finished: the shell's convention, so `train && sample` stops
        return 128 + stop.signum
    return 0
