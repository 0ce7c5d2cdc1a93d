"""``jitkit prepare`` (image folder → memory-mapped cache) and ``jitkit data export`` (data → sample folder)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="center-crop an image folder once into a memory-mapped cache (fast CPU data loading)",
        description=(
            "Decode and ADM-center-crop every image of --data (PATH/train/<class>, PATH/<class> or one folder) "
            "into CACHE: images.u8 (uint8 N×3×S×S), labels.npy, classes.json, manifest.json with a checksum. "
            "Runs in parallel with a progress bar; re-run the same command to resume an interrupted prepare. "
            "Train on it with --data CACHE."
        ),
    )
    p.add_argument("--data", required=True, metavar="PATH", help="image folder")
    p.add_argument("--size", type=int, default=256, help="image side after the center crop (default 256)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache folder to write")
    p.add_argument("--split", default="train", help="for the ImageNet layout: train (default) or val")
    p.add_argument(
        "--workers", type=int, default=-1, help="decoding processes (default: from CPUs and memory)"
    )
    p.add_argument("--strict", action="store_true", help="unreadable images are an error instead of skipped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.add_argument(
        "--format",
        choices=("cache", "webdataset"),
        default="cache",
        help="cache: one memory-mapped file (default); webdataset: tar shards + manifest.json for multi-node",
    )
    p.add_argument("--shard-size", type=int, default=None, help="webdataset: images per shard (default 1000)")
    p.add_argument(
        "--image-format",
        choices=("png", "jpeg"),
        default=None,
        help="webdataset: png (default, lossless) or jpeg",
    )
    p.add_argument("--quality", type=int, default=None, help="webdataset: JPEG quality (default 95)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_prepare)

    d = sub.add_parser("data", help="inspect and export training data")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    e = dsub.add_parser(
        "export",
        help="write data as a sample folder (00000.png … + labels.csv) and/or a grid PNG",
        description=(
            "Write SOURCE ('shapes', an image folder or a cache) as a sample folder, the layout `jitkit sample` "
            "writes, so you can look at exactly what the model trains on and any tool can judge it."
        ),
    )
    e.add_argument(
        "source", metavar="SOURCE", help="'shapes', an image folder or a cache made by `jitkit prepare`"
    )
    e.add_argument("--out", default=None, metavar="DIR", help="sample folder to write")
    e.add_argument("--per-class", type=int, default=None, help="images per class (default: all; shapes: 200)")
    e.add_argument(
        "--size", type=int, default=None, help="image side (shapes: 16, folders: 256; a cache keeps its own)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the shapes data (default 0)")
    e.add_argument("--grid", default=None, metavar="PNG", help="also write a grid: one row per class")
    e.add_argument("--grid-per-class", type=int, default=4, help="images per class in the grid (default 4)")
    e.add_argument("--strict", action="store_true", help="unreadable images are an error instead of skipped")
    e.add_argument("--overwrite", action="store_true", help="replace an existing sample folder at --out")
    e.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    e.set_defaults(func=run_export)
    d.set_defaults(func=lambda args: d.print_help() or 0)


def run_prepare(args: argparse.Namespace) -> int:
    from jitkit.cli.flags import call_with_flags

    wds_only = [
        f"--{k.replace('_', '-')}"
        for k in ("shard_size", "image_format", "quality")
        if getattr(args, k) is not None
    ]
    if args.format == "webdataset":
        from jitkit.data.webdataset_write import prepare_shards

        given = {k: v for k, v in vars(args).items() if v is not None}
        call_with_flags(prepare_shards, argparse.Namespace(**given))  # flags named after its parameters
        return 0
    if wds_only:
        raise ValueError(f"{', '.join(wds_only)} apply to --format webdataset only; add --format webdataset")
    from jitkit.data.cache import prepare_cache

    call_with_flags(prepare_cache, args)  # the flags are named after prepare_cache's parameters
    return 0


def run_export(args: argparse.Namespace) -> int:
    from jitkit.cli.flags import call_with_flags
    from jitkit.eval.export import export_samples

    call_with_flags(export_samples, args)  # the flags are named after export_samples' parameters
    return 0
