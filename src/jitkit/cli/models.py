"""``jitkit models``: the registered JiT sizes with their parameter counts."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered model configs and their parameter counts")
    p.add_argument(
        "--img-size", type=int, default=None, help="count at this image size instead of the default"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jitkit.config import MODEL_NAMES, model_config
    from jitkit.models.registry import build_model, count_params

    head = f"{'name':<10} {'img':>5} {'patch':>5} {'depth':>5} {'width':>5} {'heads':>5} {'bneck':>5} {'ctx':>7} {'params':>13}"
    print(head)
    print("-" * len(head))
    for name in MODEL_NAMES:
        cfg = model_config(name) if args.img_size is None else model_config(name, img_size=args.img_size)
        n = count_params(build_model(cfg, device="meta"))
        ctx = f"{cfg.in_context_len}@{cfg.in_context_start}"
        print(
            f"{name:<10} {cfg.img_size:>5} {cfg.patch_size:>5} {cfg.depth:>5} {cfg.hidden_size:>5} "
            f"{cfg.num_heads:>5} {cfg.bottleneck_dim:>5} {ctx:>7} {n:>13,}"
        )
    return 0
