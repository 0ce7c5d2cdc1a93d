"""``jitkit train`` (preset ← YAML ← command line → one call of jitkit.train.train) and ``jitkit plan``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_plan(sub)


# -- jitkit train -------------------------------------------------------------------------------------------

# flag → dotted config key (value conversion by the config's own coercion)
_FLAG_KEYS = {
    "model": "model.name",
    "img_size": None,  # model.img_size and data.img_size together
    "data": "data.data",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "global_batch": "train.global_batch",
    "accum_steps": "train.accum_steps",
    "blr": "train.blr",
    "lr": "train.lr",
    "out": "train.out",
    "device": "train.device",
    "precision": "train.precision",
    "seed": "train.seed",
    "sample_every": "train.sample_every",
    "ckpt_every": "train.ckpt_every",
    "log_every": "train.log_every",
    "workers": "data.workers",
    "threads": "train.threads",
}


def _register_train(sub: argparse._SubParsersAction) -> None:
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


def _dotted_to_nested(flat: dict[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    from jitkit.config import RunConfig

    return RunConfig.nest(flat)


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
        nested = merge_dicts(nested, _dotted_to_nested(flat, sections))
    flat: dict[str, Any] = {}
    for name, key in _FLAG_KEYS.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        if name == "img_size":
            flat["model.img_size"] = v
            flat["data.img_size"] = v
        else:
            flat[key] = v
    if args.batch_size is not None and str(args.batch_size).lower() != "auto":
        try:
            flat["train.batch_size"] = int(args.batch_size)
        except ValueError as e:
            raise ValueError(
                f"--batch-size: expected a positive integer or 'auto', found {args.batch_size!r}"
            ) from e
    if args.fsdp:
        flat["train.fsdp"] = True
    if args.compile is not None:
        flat["train.compile"] = bool(args.compile)
    if args.grad_checkpoint:
        flat["model.grad_checkpoint"] = True
    flat.update(_parse_kv(list(args.sets) + list(args.overrides)))
    return merge_dicts(nested, _dotted_to_nested(flat, sections))


def build_config(args: argparse.Namespace):
    """(RunConfig, resume path or None, notes) from the parsed arguments."""
    from jitkit.config import merge_dicts, preset_dict, resolve_run_config

    explicit = explicit_overrides(args)
    preset_name = args.preset or "shapes"
    base = preset_dict(preset_name)
    notes: list[str] = []
    # data image size follows the model unless given
    if "img_size" in explicit.get("model", {}) and "img_size" not in explicit.get("data", {}):
        explicit.setdefault("data", {})["img_size"] = explicit["model"]["img_size"]
    fresh = resolve_run_config(merge_dicts(base, explicit))
    if fresh.data.img_size != fresh.model.img_size and "img_size" not in explicit.get("data", {}):
        fresh = fresh.override({"data.img_size": fresh.model.img_size})
    if not args.resume:
        return fresh, None, notes

    from jitkit.checkpoint import load_checkpoint, resolve_checkpoint_path
    from jitkit.train.engine import find_resume_run

    if args.resume == "auto":
        run = find_resume_run(fresh.train.out)
        if run is None:
            notes.append(f"--resume auto: no run with a checkpoint under {fresh.train.out}; starting fresh")
            return fresh, None, notes
        ckpt_path = resolve_checkpoint_path(run)
    else:
        ckpt_path = resolve_checkpoint_path(args.resume)
    ck_meta = json.loads((ckpt_path / "meta.json").read_text())
    from jitkit.config import RunConfig

    ck_cfg = RunConfig.from_dict(ck_meta["config"], strict=False)
    # explicit settings (incl. an explicit --preset) override the checkpoint's config
    layered = merge_dicts(preset_dict(args.preset), explicit) if args.preset else explicit
    ck_dict = ck_cfg.to_dict()
    model_over = layered.get("model", {})
    if model_over:
        if "name" in model_over and model_over["name"] != ck_cfg.model.name:
            req = resolve_run_config(merge_dicts({"model": {}}, {"model": model_over})).model
        else:
            req = ck_cfg.model.replace(**{k: v for k, v in model_over.items() if k != "name"})
        if req.to_dict() != ck_cfg.model.to_dict():
            raise ValueError(
                f"--resume {ckpt_path}: the model asked for on the command line differs from the checkpoint's; "
                f"refusing to continue (drop the model options to use the checkpoint's, or start a new run "
                f"with another --out)\n"
                + side_by_side(ck_cfg.model.to_dict(), req.to_dict(), "checkpoint", "command line")
            )
    merged = merge_dicts(ck_dict, {k: v for k, v in layered.items() if k != "model"})
    cfg = RunConfig.from_dict(merged)
    changed = [
        f"{s}.{k}: {ck_dict[s][k]} -> {cfg.to_dict()[s][k]}"
        for s in cfg.SECTIONS
        for k in ck_dict[s]
        if ck_dict[s][k] != cfg.to_dict()[s][k]
    ]
    if changed:
        notes.append("resuming with explicit changes to the checkpoint's config: " + "; ".join(changed))
    _ = load_checkpoint  # (imported for callers that want to inspect; the engine loads the weights)
    return cfg, str(ckpt_path), notes


def side_by_side(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """Two flat dicts as aligned columns; differing rows are marked."""
    keys = list(dict.fromkeys(list(a) + list(b)))
    w = max(14, *(len(str(a.get(k))) for k in keys))
    rows = [f"  {'field':<18} {name_a:>{w}}   {name_b:>{w}}"]
    for k in keys:
        va, vb = str(a.get(k, "-")), str(b.get(k, "-"))
        rows.append(f"  {k:<18} {va:>{w}}   {vb:>{w}}" + ("   <-- differs" if va != vb else ""))
    return "\n".join(rows)


def format_config(cfg) -> str:
    lines = []
    for sec, vals in cfg.to_dict().items():
        items = ", ".join(f"{k}={v}" for k, v in vals.items())
        lines.append(f"  {sec}: {items}")
    return "\n".join(lines)


def _apply_auto_batch(cfg, notes: list[str]):
    """--batch-size auto: micro-batch/accumulation (and checkpointing) from the planner for this machine."""
    from jitkit.runtime.dist import env_world
    from jitkit.train.engine import resolve_device
    from jitkit.train.planner import dataset_size_for, detect_hardware, make_plan

    _, world, _ = env_world()
    hw = detect_hardware()
    dev = resolve_device(cfg.train.device)
    kind = dev.type
    target = cfg.train.global_batch or cfg.train.batch_size * cfg.train.accum_steps * world
    plan = make_plan(
        cfg.model,
        target_batch=target,
        device_kind=kind,
        devices=world,
        device_mem=hw["device_mem"] if kind == hw["device_kind"] else None,
        host_mem=hw["host_mem"],
        cpus=hw["cpus"],
        blr=cfg.train.blr,
        precision=cfg.train.precision,
        fsdp=cfg.train.fsdp,
        dataset_size=dataset_size_for(cfg.data.data, cfg.data.per_class),
    )
    notes.append("--batch-size auto:\n" + plan.render())
    upd = {
        "train.batch_size": plan.micro_batch,
        "train.global_batch": plan.effective_batch,
        "train.accum_steps": 1,
        "model.grad_checkpoint": plan.grad_checkpoint,
    }
    return cfg.override(upd)


def _calm_openmp_on_busy_hosts() -> str | None:
    """On a CPU host that is already busy (1-min load ≥ cores), make OpenMP threads sleep instead of spin.

    Spinning worker threads of several processes starve each other: measured on a 2-core host at load 9,
    JiT-T/4 trained at 13 img/s with spinning and 425 img/s with OMP_WAIT_POLICY=PASSIVE. Must run before
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
    if args.batch_size is not None and str(args.batch_size).lower() == "auto":
        cfg = _apply_auto_batch(cfg, notes)
    rank, _, _ = env_world()
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
        from jitkit.eval.hooks import make_eval_callbacks

        callbacks = make_eval_callbacks(cfg, ref_stats=args.eval_ref)
        for cb in callbacks:
            if hasattr(cb, "progress"):
                cb.progress = not args.no_progress
    try:
        run_dir = train(cfg, resume=resume, callbacks=callbacks, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"jitkit train: error: {e}", file=sys.stderr)
        return 3
    except DiskFullError as e:
        print(f"jitkit train: error: {e.strerror or e}", file=sys.stderr)
        return 4
    finally:
        from jitkit.runtime import dist

        dist.cleanup()
    if main:
        print(f"[jitkit] run folder: {run_dir}")
    return 0


# -- jitkit plan --------------------------------------------------------------------------------------------


def _register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="choose micro-batch, accumulation, workers and precision for your hardware; estimate memory",
        description=(
            "Plan a training run: from the model, image size, devices and host (detected, or given) and a "
            "target effective batch, print micro-batch, accumulation, DataLoader workers, precision, the "
            "estimated peak memory per device and on the host, LR and steps per epoch — with and without "
            "activation checkpointing — and warn when it will not fit."
        ),
    )
    p.add_argument("--preset", default="imagenet256-b16", help="take model/batch/blr/data from this preset")
    p.add_argument("--model", default=None, help="registered model name (default: the preset's)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="target effective batch (default: the preset's)")
    p.add_argument("--gpus", type=int, default=None, help="number of GPUs (0: CPU training)")
    p.add_argument("--gpu-mem", default=None, help="memory per GPU, e.g. 12GiB")
    p.add_argument("--host-mem", default=None, help="host memory, e.g. 24GiB")
    p.add_argument("--cpus", type=int, default=None, help="host CPU cores")
    p.add_argument("--device-kind", choices=["cpu", "cuda", "mps"], default=None)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)
    ck = p.add_mutually_exclusive_group()
    ck.add_argument("--grad-checkpoint", dest="gc", action="store_true", default=None)
    ck.add_argument("--no-grad-checkpoint", dest="gc", action="store_false")
    p.add_argument("--fsdp", action="store_true", help="shard weights and optimizer state over the GPUs")
    p.add_argument("--blr", type=float, default=None)
    p.add_argument("--dataset-size", type=int, default=None, help="images in the data set (for steps/epoch)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from jitkit.config import preset_dict, resolve_run_config
    from jitkit.train.planner import dataset_size_for, detect_hardware, make_plan, parse_bytes

    d = preset_dict(args.preset)
    if args.model:
        d["model"] = {k: v for k, v in d["model"].items() if k not in ("name", "img_size")} | {
            "name": args.model
        }
    if args.img_size:
        d["model"]["img_size"] = args.img_size
    if args.num_classes:
        d["model"]["num_classes"] = args.num_classes
    cfg = resolve_run_config(d)
    mc = cfg.model

    given = args.gpus is not None or args.gpu_mem is not None or args.device_kind is not None
    hw = detect_hardware() if not given or args.host_mem is None or args.cpus is None else {}
    if given:
        kind = args.device_kind or ("cuda" if (args.gpus or 0) > 0 or args.gpu_mem else "cpu")
        n = args.gpus if args.gpus is not None else 1
        if kind == "cpu":
            n = max(1, n)
        dev_mem = parse_bytes(args.gpu_mem) if args.gpu_mem else None
        if kind != "cpu" and dev_mem is None:
            raise ValueError(f"--gpus {n}: give the memory of one GPU with --gpu-mem (e.g. --gpu-mem 12GiB)")
    else:
        kind, n, dev_mem = hw["device_kind"], hw["devices"], hw["device_mem"]
    host = parse_bytes(args.host_mem) if args.host_mem else hw["host_mem"]
    cpus = args.cpus if args.cpus else hw["cpus"]
    tc = cfg.train
    target = args.batch or tc.global_batch or tc.batch_size * max(1, n if kind != "cpu" else 1)
    ds = args.dataset_size or dataset_size_for(cfg.data.data, cfg.data.per_class)
    plan = make_plan(
        mc,
        target_batch=target,
        device_kind=kind,
        devices=n,
        device_mem=dev_mem,
        host_mem=host,
        cpus=cpus,
        blr=args.blr if args.blr is not None else tc.blr,
        precision=args.precision or ("auto" if tc.precision == "auto" else tc.precision),
        grad_checkpoint=args.gc,
        fsdp=args.fsdp,
        dataset_size=ds,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=1, default=str))
    else:
        print(plan.render())
    return 0 if plan.fits else 1
