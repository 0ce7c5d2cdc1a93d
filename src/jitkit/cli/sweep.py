"""``jitkit sweep``: tune the sampler (guidance scale, interval, solver, steps, time grid) by a metric."""

from __future__ import annotations

import argparse
import sys

from jitkit.cli.evaluate import add_inception_args

# library parameters → flags, for errors
_FLAGS = {
    "cfg": "cfgs",
    "interval": "intervals",
    "sampler": "samplers",
    "steps": "steps",
    "time_grid": "time_grids",
    "batch_size": "batch_size",
    "per_class": "per_class",
}
SWEEP_METRICS = ("shapes", "fid", "is", "pr")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="sample a grid of guidance scales (and intervals, solvers, steps, time grids), score each, pick the best",
        description=(
            "Sample every combination of the given sampler settings from one fixed set of seeds, score each with "
            "a metric (the data set's own, or FID / IS / precision-recall with Inception weights), and write a "
            "table, a plot and each setting's image grid into --out. Resumable: run the same command again to "
            "finish an interrupted sweep. With --apply the best setting becomes the run's default sampler "
            "(jitkit sample, the demo, previews); the previous one is kept in RUN/log.jsonl."
        ),
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run folder, checkpoint folder or a file in one")
    p.add_argument("--cfgs", required=True, metavar="C1,C2,…", help="guidance scales, e.g. 1,1.5,2,3,4")
    p.add_argument(
        "--intervals",
        default=None,
        metavar="LO-HI,…",
        help="CFG intervals, e.g. 0-1,0.1-1 (default: the run's)",
    )
    p.add_argument(
        "--samplers", default=None, metavar="NAME,…", help="solvers, e.g. heun,dpm++2m (default: the run's)"
    )
    p.add_argument(
        "--steps", default=None, metavar="K1,K2,…", help="step counts, e.g. 10,20 (default: the run's)"
    )
    p.add_argument(
        "--time-grids",
        default=None,
        metavar="NAME,…",
        help="time grids, e.g. uniform,logsnr (default: the run's)",
    )
    p.add_argument(
        "--metric",
        default=None,
        choices=SWEEP_METRICS,
        help="shapes (the shapes data set's accuracy, ties by IoU), fid (needs --ref), is, pr (needs --ref with "
        "features); default: the run's data set's own metric",
    )
    p.add_argument("--ref", default=None, metavar="STATS_NPZ", help="reference statistics for fid / pr")
    p.add_argument("--per-class", type=int, default=16, help="images per class and setting (default 16)")
    p.add_argument("--seed", type=int, default=0, help="the fixed seed set (image i's noise: (seed, i))")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (table, plot, grids; resumable)")
    p.add_argument("--apply", action="store_true", help="store the best setting as the run's default sampler")
    p.add_argument("--ema", choices=["1", "2", "none"], default="1", help="which weights (default: EMA 1)")
    p.add_argument("--sample-batch-size", type=int, default=64, help="images per sampling batch (default 64)")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="sampling precision"
    )
    add_inception_args(p)
    p.set_defaults(func=run_sweep_cmd)


def _floats(spec: str, flag: str) -> list[float]:
    import math

    try:
        vals = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"{flag}: expected comma-separated numbers, found {spec!r}") from e
    bad = [v for v in vals if not math.isfinite(v)]
    if bad or not vals:
        raise ValueError(f"{flag}: expected finite numbers, found {spec!r}")
    return vals


def _names(spec: str | None) -> list[str] | None:
    return None if spec is None else [x.strip() for x in spec.split(",") if x.strip()]


def _intervals(spec: str | None) -> list[tuple[float, float]] | None:
    if spec is None:
        return None
    out = []
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        parts = tok.split("-")
        if len(parts) != 2:
            raise ValueError(f"--intervals: expected LO-HI pairs like 0.1-1, found {tok!r}")
        lo, hi = _floats(",".join(parts), "--intervals")
        out.append((lo, hi))
    return out


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jitkit.checkpoint import load_denoiser, resolve_checkpoint_path
    from jitkit.checkpoint.load import checkpoint_meta
    from jitkit.cli.flags import flag_error, local_checkpoint
    from jitkit.config import RunConfig
    from jitkit.diffusion.generate import balanced_labels, cast_for_inference
    from jitkit.diffusion.sampling import sampling_cost
    from jitkit.eval.sweep import apply_sampler, inception_metric, run_sweep, shapes_metric, sweep_settings
    from jitkit.runtime import resolve_device, resolve_precision
    from jitkit.train.memory_guard import check_sampling_memory

    args.checkpoint = local_checkpoint(args.checkpoint)  # hf://: one download
    meta = checkpoint_meta(args.checkpoint)
    cfg = RunConfig.from_dict(meta["config"], strict=False)
    try:
        steps = None if args.steps is None else [int(s) for s in _floats(args.steps, "--steps")]
        settings = sweep_settings(
            cfg.sampler,
            cfgs=_floats(args.cfgs, "--cfgs"),
            intervals=_intervals(args.intervals),
            methods=_names(args.samplers),
            steps=steps,
            time_grids=_names(args.time_grids),
        )
        if args.per_class < 1:
            raise ValueError(f"per_class must be >= 1, found {args.per_class}")
        if args.sample_batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {args.sample_batch_size}")
    except ValueError as e:
        raise flag_error(e, _FLAGS | {"method": "samplers", "batch_size": "sample_batch_size"}) from e
    which = args.metric or ("shapes" if str(cfg.data.data).lower() == "shapes" else None)
    if which is None:
        raise ValueError(
            f"the run's data ({cfg.data.data}) has no built-in metric: choose --metric fid --ref STATS.npz, "
            "--metric is, or --metric pr --ref STATS.npz (Inception weights: --inception-weights)"
        )
    if which in ("fid", "pr") and not args.ref:
        raise ValueError(
            f"--metric {which} needs reference statistics: --ref STATS.npz (make them with jitkit ref-stats)"
        )
    if which == "shapes":
        metric = shapes_metric()
    else:
        from jitkit.cli.evaluate import inception
        from jitkit.eval.fid import load_stats

        ref = load_stats(args.ref) if args.ref else None
        try:
            metric = inception_metric(inception(args), which, ref)
        except ValueError as e:
            raise flag_error(e, {"ref": "ref"}) from e
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    labels = balanced_labels(cfg.model.num_classes, per_class=args.per_class)
    # the estimated peak of one batch against the free memory, before the weights are read
    note = check_sampling_memory(
        cfg.model,
        min(args.sample_batch_size, len(labels)),
        precision=precision,
        device=device,
        guidance=any(st.cfg != 1.0 for st in settings),
        batch_flag="--sample-batch-size",
    )
    if note:
        print(f"jitkit sweep: memory: {note}", file=sys.stderr)
    denoiser, cfg, classes = load_denoiser(args.checkpoint, ema=args.ema, device=device)
    cast_for_inference(denoiser, precision)
    names = (
        list(classes)
        if len(classes) == cfg.model.num_classes
        else [str(i) for i in range(cfg.model.num_classes)]
    )
    print(
        f"jitkit sweep: {len(settings)} settings × {len(labels)} images ({args.per_class} per class, seed "
        f"{args.seed}), metric {metric.name} ({metric.key}, {'higher' if metric.higher_is_better else 'lower'} is "
        f"better), on {device}, precision {precision} → {args.out}",
        file=sys.stderr,
    )

    def on_row(row: dict, reused: bool) -> None:
        score = row.get(metric.key)
        extra = (
            f", {metric.tie_key} {row[metric.tie_key]:.3f}"
            if metric.tie_key and metric.tie_key in row
            else ""
        )
        print(
            f"  {row['key']}: {metric.key} {score:.4f}{extra} ({row['nfe']} NFE){' [done before]' if reused else ''}",
            file=sys.stderr,
        )

    req = {
        "checkpoint": str(resolve_checkpoint_path(args.checkpoint)),
        "ema": args.ema,
        "precision": precision,
    }
    res = run_sweep(
        denoiser,
        settings,
        labels,
        metric,
        args.out,
        classes=names,
        seed=args.seed,
        batch_size=args.sample_batch_size,
        precision=precision,
        meta=req,
        progress=not args.no_progress,
        on_row=on_row,
    )
    best = res["best"]
    best_cfg = cfg.sampler.replace(
        method=best["method"],
        steps=best["steps"],
        cfg=best["cfg"],
        interval=tuple(best["interval"]),
        time_grid=best["time_grid"],
    )
    print(
        f"jitkit sweep: best {best['key']} ({metric.key} {best[metric.key]:.4f}): {sampling_cost(best_cfg)}, "
        f"interval {list(best_cfg.interval)}; table {Path(args.out) / 'table.md'}, plot {Path(args.out) / 'sweep.png'}"
    )
    if args.apply:
        previous = apply_sampler(
            args.checkpoint, best_cfg, reason=f"jitkit sweep {args.out}: best {metric.key}"
        )
        print(
            f"jitkit sweep: the run's default sampler is now {best['key']} (was {previous.get('method')} "
            f"{previous.get('steps')} steps, cfg {previous.get('cfg')}, interval {previous.get('interval')}; kept "
            "in the run's log.jsonl)"
        )
    return 0
