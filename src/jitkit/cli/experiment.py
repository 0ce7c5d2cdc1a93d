"""``jitkit experiment manifold|shapes``: the two explanatory experiments, each one command."""

from __future__ import annotations

import argparse
from typing import Any

# flags not named after their config field (flag dest → field); every other flag sets the field of its name
_MANIFOLD_RENAMES = {"steps": "sample_steps", "samples": "n_samples"}
_SHAPES_RENAMES = {"max_epochs": "long_max_epochs", "check_every": "long_check_every"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="run the manifold toy or the shapes DiT-vs-JiT study (figures, report.md, results.json)",
        description="Run one of jitkit's explanatory experiments; each writes PNG figures, a report.md "
        "embedding them with tables, and results.json into --out.",
    )
    es = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")

    m = es.add_parser(
        "manifold",
        help="the JiT paper's swiss-roll toy: x-, eps- and v-prediction with the v-loss in D = 2 … 512",
        description="Swiss roll embedded in D dims; an MLP per D and prediction (x, eps, v), all with the v-loss. "
        "Default epochs fit ~10 minutes on 2 CPU cores; --epochs 2000 is the notebook's budget.",
    )
    m.add_argument("--out", default="runs/experiments/manifold", help="output folder")
    m.add_argument("--quick", action="store_true", help="a miniature run (seconds), for tests")
    m.add_argument("--epochs", type=int, default=None, help="epochs per model (default 150; notebook 2000)")
    m.add_argument("--dims", default=None, help="ambient dimensions, e.g. 2,8,16,32,128,512")
    m.add_argument("--preds", default=None, help="prediction types, subset of x,eps,v")
    m.add_argument("--n", type=int, default=None, help="number of swiss-roll points (10000)")
    m.add_argument("--noise", type=float, default=None, help="roll noise before the 1/10 scaling (0.5)")
    m.add_argument("--batch-size", type=int, default=None, help="batch size (1024)")
    m.add_argument("--lr", type=float, default=None, help="Adam learning rate (1e-3)")
    m.add_argument("--steps", type=int, default=None, help="Euler sampling steps (100)")
    m.add_argument("--samples", type=int, default=None, help="samples per model (2000)")
    m.add_argument("--seed", type=int, default=None)
    m.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument("--debug", action="store_true", help="show tracebacks")
    m.set_defaults(func=run_manifold)

    s = es.add_parser(
        "shapes",
        help="the toy-scale DiT study: DiT eps-pred DDPM vs JiT x-pred on shapes 16x16, JiT until crisp, "
        "a U-Net DDPM, and the architecture x objective 2x2",
        description="(a) DiT eps-prediction DDPM baseline, (b) JiT of the same width/depth, same recipe and epochs, "
        "(c) JiT trained until shapes accuracy >= 0.95 and mean IoU >= 0.9, (d) a U-Net of the DiT's parameter "
        "count in (a)'s DDPM, recipe and sampler, (e) dit_xpred: (a)'s DiT with (b)'s objective, (f) jit_eps: (b)'s "
        "JiT with (a)'s DDPM.",
    )
    s.add_argument("--out", default="runs/experiments/shapes", help="output folder")
    s.add_argument("--quick", action="store_true", help="a miniature run (seconds), for tests")
    s.add_argument("--epochs", type=int, default=None, help="epochs of (a), (b), (d), (e), (f) (30)")
    s.add_argument("--max-epochs", type=int, default=None, help="epoch budget of (c) (100)")
    s.add_argument("--check-every", type=int, default=None, help="(c) checks the targets every N epochs (10)")
    s.add_argument("--no-long", action="store_true", help="skip run (c)")
    s.add_argument(
        "--runs", default=None, help="which runs, subset of dit,jit,jit_long,unet,dit_xpred,jit_eps (all)"
    )
    s.add_argument("--beta-start", type=float, default=None, help="DDPM linear beta schedule start (1e-4)")
    s.add_argument("--beta-end", type=float, default=None, help="DDPM linear beta schedule end (0.02)")
    s.add_argument("--heun-steps", type=int, default=None, help="JiT sampler steps (20)")
    s.add_argument("--per-class", type=int, default=None, help="training images per class (200)")
    s.add_argument("--samples-per-class", type=int, default=None, help="evaluation samples per class (16)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--debug", action="store_true", help="show tracebacks")
    s.set_defaults(func=run_shapes)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _configure(base: Any, args: argparse.Namespace, renames: dict[str, str], **more: Any) -> Any:
    """``base`` with the flags given on the command line (typed coercion and validation by the config); an
    error about a field names its flag."""
    from jitkit.cli.flags import flag_error, given_flags

    try:
        return base.replace(**{**given_flags(args, base.field_names(), renames), **more})
    except ValueError as e:
        flags = {f: f for f in base.field_names() if hasattr(args, f)} | {v: k for k, v in renames.items()}
        raise flag_error(e, flags) from e


def run_manifold(args: argparse.Namespace) -> int:
    from jitkit.experiments.manifold import ManifoldConfig, quick_config, run_manifold

    base = quick_config() if args.quick else ManifoldConfig()
    cfg = _configure(base, args, _MANIFOLD_RENAMES)
    res = run_manifold(cfg, args.out, progress=not args.no_progress)
    print(
        f"manifold: {res['wall_seconds']:.0f} s; wrote {args.out}/report.md, manifold.png, samples.npz, results.json"
    )
    for D in cfg.dims:
        cells = ", ".join(f"{p} {res['metrics'][f'D{D}_{p}']['mean_nn_dist']:.3f}" for p in cfg.preds)
        print(f"  D={D:<4} mean NN distance: {cells}")
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    from jitkit.experiments.shapes_config import ShapesStudyConfig, quick_config
    from jitkit.experiments.shapes_study import run_shapes_study

    base = quick_config() if args.quick else ShapesStudyConfig()
    cfg = _configure(base, args, _SHAPES_RENAMES)
    if args.no_long:
        cfg = _configure(cfg, args, _SHAPES_RENAMES, runs=tuple(r for r in cfg.runs if r != "jit_long"))
    run_shapes_study(cfg, args.out, progress=not args.no_progress)
    print(f"shapes: wrote {args.out}/report.md, grid_*.png, trajectory.png, losses.png, results.json")
    return 0
