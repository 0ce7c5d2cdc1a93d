"""``jitkit export``: a run's weights in another ecosystem's layout (``--format diffusers``)."""

from __future__ import annotations

import argparse

FORMATS = ("diffusers",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's weights as a diffusers-style folder (JiTPipeline / JiTTransformer2DModel)",
        description=(
            "Write one weight set of a jitkit run (its latest checkpoint), a checkpoint folder or a file inside "
            "one as a diffusers-style folder: model_index.json, transformer/config.json + "
            "diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json (docs/ecosystem.md). "
            "jitkit import DIR reads it back."
        ),
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run folder, checkpoint folder or a file in one")
    p.add_argument(
        "--format", choices=FORMATS, default="diffusers", help="output layout (default: diffusers)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output folder")
    p.add_argument("--ema", choices=["1", "2", "none"], default="1", help="which weights (default: EMA 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:

    from jitkit.checkpoint.diffusers import export_diffusers
    from jitkit.cli.flags import checked_out

    out = checked_out(args)
    out = export_diffusers(args.checkpoint, out, ema=args.ema, overwrite=args.overwrite)
    print(
        f"jitkit export: wrote {out} (diffusers layout, EMA {args.ema} weights: transformer/, scheduler/, "
        f"model_index.json). Read it back with: jitkit import {out} --out RUN"
    )
    return 0
