"""``jitkit demo``: a local web page that shows a JiT denoising step by step."""

from __future__ import annotations

import argparse

from jitkit.cli.sample import add_device_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="open an interactive page that steps through sampling (noisy state, patch grid, x-prediction)",
        description=(
            "Serve a local page that samples from a JiT model and shows every step: the noisy state z_t, "
            "the same image cut into the model's patch grid, and the clean-image prediction. With no "
            "RUN_OR_CKPT, the small built-in shapes model is used (trained once on first use and cached)."
        ),
    )
    p.add_argument(
        "run",
        nargs="?",
        metavar="RUN_OR_CKPT",
        help="a run folder, checkpoint folder or weights file (default: the cached shapes model)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument(
        "--port", type=int, default=8765, help="port to listen on (default: 8765; 0 picks a free one)"
    )
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where the built-in shapes model is cached (default: $XDG_CACHE_HOME/jitkit or ~/.cache/jitkit)",
    )
    p.add_argument("--retrain", action="store_true", help="train the built-in shapes model again")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs when training the built-in shapes model (default: preset)",
    )
    p.add_argument(
        "--ema", default="1", choices=["1", "2", "none"], help="which weights to load (default: EMA 1)"
    )
    add_device_args(p)
    p.add_argument(
        "--max-steps", type=int, default=50, help="largest number of sampling steps allowed (default: 50)"
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jitkit.checkpoint import load_denoiser
    from jitkit.demo.model import demo_data_images, ensure_shapes_model
    from jitkit.demo.server import PortUnavailable, create_app, serve
    from jitkit.diffusion.generate import cast_for_inference
    from jitkit.models.registry import precision_for_model
    from jitkit.runtime import resolve_device, resolve_precision, set_tf32

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in [0, 65535], found {args.port}")
    if args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, found {args.max_steps}")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)  # before any training or loading
    set_tf32(device, True)  # float32 sampling on Ampere+ GPUs: TF32 products (a no-op elsewhere)
    if args.run is None:
        overrides = {"train.epochs": args.epochs} if args.epochs else None
        path = ensure_shapes_model(args.cache_dir, retrain=args.retrain, overrides=overrides)
        source = "built-in shapes model"
    else:
        path = args.run
        source = str(path)
    denoiser, cfg, classes = load_denoiser(path, ema=args.ema, device=device)
    if args.precision == "auto":  # measured for this model, one image and its unconditional twin per forward
        precision, _ = precision_for_model("auto", device, cfg.model, 2)
    cast_for_inference(denoiser, precision)  # half-precision weights when sampling in half precision
    print(f"jitkit demo: loaded {cfg.model.name} ({len(classes)} classes) from {path}", flush=True)
    app = create_app(
        denoiser,
        cfg.model,
        classes,
        sampler=cfg.sampler,
        steps_range=(1, args.max_steps),
        source=source,
        precision=precision,
        data_images=demo_data_images(cfg.data, cfg.model.img_size),
    )
    try:
        serve(app, host=args.host, port=args.port, open_browser=args.open)
    except PortUnavailable as e:
        raise ValueError(f"--port {args.port}: {e}") from e
    return 0
