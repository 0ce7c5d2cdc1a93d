"""``jitkit bench``: measured training/forward/sampling throughput, peak memory, FLOPs and MFU."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jitkit.bench.settings import BenchSettings


def register(sub: argparse._SubParsersAction) -> None:
    from jitkit.config.schema import (  # config never imports torch: --help stays instant
        COMPILE_SCOPES,
        SAMPLERS,
    )

    p = sub.add_parser(
        "bench",
        help="measure img/s (train, forward, sampling), peak memory, FLOPs per image and MFU",
        description=(
            "Steady-state throughput of one model configuration with data from memory: warm-up excluded, "
            "several repeats, median (and best) reported. FLOPs are analytic (2·MACs of all matmuls incl. "
            "attention, forward; training = 3× forward); MFU divides each timed repeat by a dense GEMM probe "
            "in the same precision run just before it (median over the repeats), so drift of the device's speed "
            "does not enter it; the JSON also has it against the best call of a separate GEMM peak run."
        ),
    )
    p.add_argument("--model", default="JiT-B/16", help="registered model name (see `jitkit models`)")
    p.add_argument("--img-size", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--batch-size", type=int, default=2, help="batch for train and forward (default 2)")
    p.add_argument(
        "--sample-batch-size", type=int, default=None, help="batch for sampling (default: --batch-size)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="fp32, autocast to bf16/fp16, or auto (bf16 on CUDA, fp32 elsewhere) (default fp32)",
    )
    # the former name of --precision, kept so that recorded commands still run
    p.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"), help=argparse.SUPPRESS)
    p.add_argument(
        "--mode", default="all", help="train | forward | sample | all, or a comma list such as train,forward"
    )
    p.add_argument(
        "--sample-steps", type=int, default=50, help="sampler steps for --mode sample (default 50)"
    )
    p.add_argument(
        "--sampler",
        default="heun",
        choices=SAMPLERS,
        help="the solver of --mode sample: " + ", ".join(SAMPLERS) + " (default heun)",
    )
    p.add_argument("--cfg", type=float, default=2.9, help="CFG scale on the interval [0.1, 1] (default 2.9)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--attention", default="sdpa", choices=("sdpa", "math", "math-fp32"))
    p.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing of the blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (opt-in)")
    p.add_argument(
        "--compile-scope",
        default=COMPILE_SCOPES[0],
        choices=COMPILE_SCOPES,
        help="with --compile, training: each block its own graph (default) or the whole forward as one graph "
        "(train.compile_scope=model: faster steps, a longer first compile)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last images and conv weights")
    p.add_argument(
        "--optim",
        default="fused",
        choices=("fused", "foreach", "loop", "fused-ema"),
        help="AdamW implementation (fused-ema: AdamW + both EMAs in one compiled pass, implied by --compile)",
    )
    p.add_argument(
        "--ema", default="foreach", choices=("foreach", "lerp", "loop", "none"), help="EMA implementation"
    )
    p.add_argument(
        "--cfg-mode",
        default="batched",
        choices=("batched", "separate"),
        help="sampling CFG: one batched forward with skipped unconditional passes (default) or two forwards",
    )
    p.add_argument("--item-sync", action="store_true", help="read loss.item() every step (as the reference)")
    p.add_argument(
        "--cpu-linear",
        default="auto",
        choices=("auto", "onednn", "aten"),
        help="float32 CPU linear layers on oneDNN or torch's MKL path (auto: the faster, timed once)",
    )
    p.add_argument("--no-tf32", action="store_true", help="keep full fp32 matmuls on Ampere+ GPUs")
    p.add_argument("--num-classes", type=int, default=None, help="label classes (default: the model's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations (default 5)")
    p.add_argument("--sample-repeats", type=int, default=1, help="timed sampler runs (default 1)")
    p.add_argument("--gemm-seconds", type=float, default=2.0, help="time spent measuring the GEMM peak")
    p.add_argument(
        "--memory",
        default="auto",
        choices=("auto", "inprocess", "subprocess", "off"),
        help="how peak memory is measured (auto: in this process, but a fresh process per variant of a CPU --compare)",
    )
    p.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall clock (default), or process CPU time: with --threads 1 a load-robust proxy for before/after "
        "comparisons on a busy machine (its img/s is then per CPU-second, not a throughput)",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="KEY=a,b",
        help="run variants of one setting side by side and print ratios, e.g. attention=sdpa,math-fp32, "
        "grad_checkpoint=0,1, compile=0,1, optim=loop,fused, ema=loop,foreach, precision=fp32,bf16, "
        "batch_size=2,8",
    )
    p.add_argument("--quick", action="store_true", help="a tiny model and few steps: runs in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.set_defaults(func=run)


# former setting names still accepted by --compare (the commands recorded in benchmarks/ use them)
_COMPARE_ALIASES = {"dtype": "precision"}


def parse_compare(spec: str) -> tuple[str, list[str]]:
    """``--compare`` text → (setting, values): ``"attention=sdpa,math-fp32"`` → ("attention", ["sdpa",
    "math-fp32"]); dashes in the key become underscores and ``dtype`` is read as ``precision``."""
    if "=" not in spec:
        raise ValueError(f"--compare expects KEY=a,b (e.g. attention=sdpa,math-fp32), found {spec!r}")
    key, vals = spec.split("=", 1)
    values = [v for v in vals.split(",") if v]
    if len(values) < 2:
        raise ValueError(f"--compare {key} needs at least two comma-separated values, found {vals!r}")
    key = key.strip().replace("-", "_")
    return _COMPARE_ALIASES.get(key, key), values


def _settings(args: argparse.Namespace) -> BenchSettings:
    from jitkit.bench.settings import QUICK, BenchSettings
    from jitkit.cli.flags import given_flags

    # every flag is named after its setting (dashes → underscores) except --no-tf32 and the old --dtype
    given = given_flags(args, BenchSettings.field_names())
    given["tf32"] = not args.no_tf32
    if args.dtype is not None:
        print("jitkit bench: --dtype is deprecated; use --precision", file=sys.stderr)
        given["precision"] = args.dtype
    s = BenchSettings.from_dict(given)
    if args.quick:
        # the quick preset replaces the size knobs the user left at their defaults
        defaults = BenchSettings()
        s = s.replace(**{k: v for k, v in QUICK.items() if getattr(s, k) == getattr(defaults, k)})
    return s


def _fmt(v, spec: str) -> str:
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if v is None else format(v, spec)


def _print_table(res: dict) -> None:
    rows = res["variants"] if "variants" in res else [res]
    labels = res["values"] if "variants" in res else [""]
    st = rows[0]["settings"]
    print(
        f"{st['model']} @ {st['img_size']}px  batch {st['batch_size']}  {st['device']} ({st['device_name']})  "
        f"{st['precision_resolved']}  threads {st['threads']}  torch {st['torch']}  CPU linear {st.get('cpu_linear_backend', '-')}"
    )
    print(
        f"FLOPs/img (fwd) {rows[0]['flops_per_img'] / 1e9:.2f} G   GEMM peak "
        f"{rows[0]['gemm_peak_flops'] / 1e9:.1f} GFLOP/s ({rows[0]['details']['gemm'].get('backend', '?')}; "
        "MFU: against a GEMM probe before each repeat)"
    )
    key = res.get("compare", "")
    head = f"{key:>16} {'train img/s':>12} {'fwd img/s':>10} {'sample img/s':>13} {'peak MiB':>9} {'MFU tr':>7} {'MFU fwd':>7}"
    print(head)
    print("-" * len(head))
    for lab, r in zip(labels, rows):
        print(
            f"{lab:>16} {_fmt(r['train_img_per_s'], '12.3f')} {_fmt(r['forward_img_per_s'], '10.3f')} "
            f"{_fmt(r['sample_img_per_s'], '13.4f')} {_fmt(r['peak_mem_mib'], '9.0f')} "
            f"{_fmt(r['mfu_train'], '7.1%')} {_fmt(r['mfu_forward'], '7.1%')}"
        )
    if "ratios" in res:
        print("ratios vs the first variant:")
        for lab, rat in res["ratios"].items():
            parts = [f"{k}={v:.3f}" for k, v in rat.items() if v is not None]
            print(f"  {lab}: " + "  ".join(parts))


def run(args: argparse.Namespace) -> int:
    from jitkit.bench.runner import run_bench

    s = _settings(args)
    compare = parse_compare(args.compare) if args.compare else None

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    res = run_bench(s, compare, log=log)
    if args.out:
        from jitkit.fileio import atomic_write_bytes

        atomic_write_bytes(args.out, (json.dumps(res, indent=1) + "\n").encode())
    if args.json:
        print(json.dumps(res))
    else:
        _print_table(res)
    return 0
