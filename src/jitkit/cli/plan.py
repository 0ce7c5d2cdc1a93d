"""``jitkit plan``: micro-batch, accumulation, workers and precision for a machine → jitkit.train.planner."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--gpus", type=int, default=None, help="number of GPUs in all hosts (0: CPU training)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="training processes on each host (torchrun's --nproc_per_node; default: all on one host); "
        "--host-mem and --cpus are per host",
    )
    p.add_argument(
        "--compute-capability",
        default=None,
        help="of the planned GPUs, e.g. 7.5 (T4) or 8.0 (A100): precision auto is bf16 from 8.0 on, fp16 "
        "below (default: the detected GPUs', else 8.0 assumed)",
    )
    p.add_argument("--gpu-mem", default=None, help="memory per GPU, e.g. 12GiB")
    p.add_argument("--host-mem", default=None, help="memory of one host, e.g. 24GiB")
    p.add_argument("--cpus", type=int, default=None, help="CPU cores of one host")
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
    from jitkit.cli.flags import flag_error
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
    bf16_native = None if given else hw.get("bf16_native")
    if args.compute_capability is not None:
        bf16_native = _compute_capability(args.compute_capability) >= (8, 0)
    host = parse_bytes(args.host_mem) if args.host_mem else hw["host_mem"]
    cpus = args.cpus if args.cpus else hw["cpus"]
    tc = cfg.train
    target = args.batch or tc.global_batch or tc.batch_size * max(1, n if kind != "cpu" else 1)
    try:
        plan = make_plan(
            cfg.model,
            target_batch=target,
            device_kind=kind,
            devices=n,
            devices_per_host=args.gpus_per_node,
            device_mem=dev_mem,
            host_mem=host,
            cpus=cpus,
            blr=args.blr if args.blr is not None else tc.blr,
            precision=args.precision or tc.precision,
            bf16_native=bf16_native,
            grad_checkpoint=args.gc,
            fsdp=args.fsdp,
            dataset_size=args.dataset_size or dataset_size_for(cfg.data.data, cfg.data.per_class),
        )
    except ValueError as e:
        raise flag_error(e, {"devices_per_host": "gpus_per_node", "devices": "gpus"}) from e
    print(json.dumps(plan.to_dict(), indent=1, default=str) if args.json else plan.render())
    return 0 if plan.fits else 1


def _compute_capability(text: str) -> tuple[int, int]:
    """'8.0' or '7.5' → (8, 0) or (7, 5)."""
    parts = str(text).strip().split(".")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--compute-capability: expected a version such as 8.0 or 7.5, found {text!r}")
    return int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
