"""``jitkit eval`` (FID / IS / precision-recall offline, the built-in metrics) and ``jitkit ref-stats``."""

from __future__ import annotations

import argparse
import sys

from jitkit.cli.sample import add_device_args


def register(sub: argparse._SubParsersAction) -> None:
    _register_eval(sub)
    _register_ref_stats(sub)


# -- jitkit eval ---------------------------------------------------------------------------------------

EVAL_METRICS = ("fid", "is", "pr", "shapes", "swissroll")


def add_inception_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inception-weights",
        default=None,
        metavar="PATH",
        help="local weights-inception-2015-12-05-6726825d.pth (default: $JITKIT_INCEPTION_WEIGHTS or torch's hub "
        "cache); nothing is downloaded",
    )
    add_device_args(p, precision=False)
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward (default 50)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def inception(args: argparse.Namespace):
    """The Inception feature extractor of ``--inception-weights`` on ``--device``."""
    from jitkit.eval.fidelity import InceptionFeatures, InceptionWeightsMissing
    from jitkit.runtime import resolve_device

    try:
        return InceptionFeatures(args.inception_weights, resolve_device(args.device))
    except InceptionWeightsMissing as e:
        raise InceptionWeightsMissing(f"{e}. On the command line: --inception-weights PATH") from e


def _register_eval(sub: argparse._SubParsersAction) -> None:
    short = "FID / IS / precision-recall (Inception, offline) or the built-in shapes and swissroll metrics"
    p = sub.add_parser("eval", help=short, description=run_eval.__doc__)
    p.add_argument(
        "samples", metavar="DIR_OR_NPZ", help="sample folder or .npz (swissroll: npz with 'samples')"
    )
    p.add_argument(
        "--metric",
        default=None,
        help="comma-separated: fid, is, pr, shapes, swissroll (default: fid,is,pr with --ref, else is)",
    )
    p.add_argument(
        "--ref", default=None, metavar="STATS_NPZ", help="reference statistics (mu, sigma[, features])"
    )
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (default 10)")
    p.add_argument(
        "--k", type=int, default=3, help="k of the k-NN manifolds for precision/recall (default 3)"
    )
    p.add_argument(
        "--data", default=None, help="swissroll: the data set name, e.g. swissroll-16 (default: from D)"
    )
    p.add_argument("--data-seed", type=int, default=0, help="swissroll: seed of the projection P (default 0)")
    p.add_argument("--heldout", type=int, default=2000, help="swissroll: held-out points (default 2000)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    add_inception_args(p)
    p.set_defaults(func=run_eval)


def _parse_metrics(spec: str | None, has_ref: bool) -> list[str]:
    if spec is None:
        return ["fid", "is", "pr"] if has_ref else ["is"]
    out = [m.strip().lower() for m in spec.split(",") if m.strip()]
    bad = [m for m in out if m not in EVAL_METRICS]
    if bad or not out:
        raise ValueError(f"--metric: unknown {bad or spec!r}; choose from {', '.join(EVAL_METRICS)}")
    if any(m in ("fid", "pr") for m in out) and not has_ref:
        raise ValueError(
            "--metric fid/pr need reference statistics: --ref stats.npz (make them with jitkit ref-stats)"
        )
    return out


def _swissroll_eval(args: argparse.Namespace) -> dict:
    from pathlib import Path

    import numpy as np

    from jitkit.config import DataConfig
    from jitkit.data import build_dataset
    from jitkit.eval.swissroll_metric import swissroll_metrics

    p = Path(args.samples)
    if p.suffix.lower() != ".npz" or not p.is_file():
        raise FileNotFoundError(
            f"--metric swissroll expects an .npz with an array 'samples' [n, D], found {p}"
        )
    with np.load(p, allow_pickle=False) as z:
        key = "samples" if "samples" in z.files else ("arr_0" if "arr_0" in z.files else None)
        if key is None:
            raise ValueError(f"{p}: expected an array 'samples' [n, D], found {z.files}")
        s = z[key]
    if s.ndim != 2 or not np.issubdtype(s.dtype, np.floating):
        raise ValueError(f"{p}: expected float samples [n, D], found {s.dtype} {list(s.shape)}")
    data = args.data or f"swissroll-{s.shape[1]}"
    ds = build_dataset(DataConfig(data=data, per_class=args.heldout, seed=args.data_seed), split="val")
    if not hasattr(ds, "P"):
        raise ValueError(f"--data {data!r} is not a swissroll data set (expected swissroll-D)")
    return swissroll_metrics(s, ds.P, ds.points2d)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a sample folder (00000.png … + labels.csv) or an .npz. FID, IS and precision/recall use
    torch-fidelity's Inception (pip install 'jitkit[eval]') with local weights; 'shapes' and 'swissroll' need
    nothing extra."""
    import json
    from pathlib import Path

    metrics = _parse_metrics(args.metric, args.ref is not None)
    results: dict = {"samples": str(args.samples)}
    if "swissroll" in metrics:
        if len(metrics) > 1:
            raise ValueError("--metric swissroll judges vectors, not images: give it alone")
        results["swissroll"] = _swissroll_eval(args)
    else:
        if "shapes" in metrics:
            from jitkit.eval.sample_folder import load_images
            from jitkit.eval.shapes_metric import format_shapes_metrics, shapes_metrics

            images, labels = load_images(args.samples)
            if labels is None:
                raise ValueError(
                    f"the shapes metric needs the class of each image: {args.samples} has no labels (a sample "
                    "folder needs labels.csv, an npz needs arr_1); write samples with jitkit sample --out/--npz"
                )
            m = shapes_metrics(images, labels)
            results["shapes"] = m
            print(format_shapes_metrics(m))
        inc = [m for m in metrics if m in ("fid", "is", "pr")]
        if inc:
            results.update(_inception_eval(args, inc))
    for key in ("fid", "inception_score", "precision", "recall"):
        if key in results:
            extra = f" ± {results['inception_score_std']:.3f}" if key == "inception_score" else ""
            print(f"{key}: {results[key]:.4f}{extra}")
    if "swissroll" in results:
        r = results["swissroll"]
        print(
            f"swissroll: mean NN distance {r['mean_nn_dist']:.4f}, off-manifold energy {r['off_manifold_energy']:.4g} "
            f"({100 * r['off_manifold_fraction']:.2f}%), sliced Wasserstein {r['sliced_wasserstein']:.4f}, n {r['n']}"
        )
    if args.json:
        from jitkit.fileio import atomic_write_bytes

        atomic_write_bytes(Path(args.json), (json.dumps(results, indent=2) + "\n").encode())
    return 0


def _inception_eval(args: argparse.Namespace, which: list[str]) -> dict:
    from jitkit.eval.fid import load_stats
    from jitkit.eval.fidelity import extract_features, image_metrics
    from jitkit.eval.sources import open_source

    ref = load_stats(args.ref) if args.ref else None
    if "pr" in which and ref is not None and "features" not in ref:
        raise ValueError(
            f"--metric pr needs reference features: {args.ref} has only mu/sigma; make it with "
            "jitkit ref-stats DATA --out STATS.npz --features"
        )
    src = open_source(args.samples)
    ext = inception(args)
    print(f"jitkit eval: {src.description}; Inception weights {ext.weights}", file=sys.stderr)
    feats = extract_features(src.batches(args.batch_size), ext, src.n, progress=not args.no_progress)
    if ref is not None and ref["mu"].shape[0] != feats["2048"].shape[1]:
        raise ValueError(
            f"{args.ref}: mu has {ref['mu'].shape[0]} dimensions, Inception pool features have "
            f"{feats['2048'].shape[1]}; expected statistics of Inception pool (2048-d) features"
        )
    res = image_metrics(
        feats,
        ref if ("fid" in which or "pr" in which) else None,
        isc="is" in which,
        prc="pr" in which,
        k=args.k,
        splits=args.splits,
    )
    if "fid" not in which:
        res.pop("fid", None)
    return res


# -- jitkit ref-stats ------------------------------------------------------------------------------------


def _register_ref_stats(sub: argparse._SubParsersAction) -> None:
    short = "reference statistics (mu, sigma of Inception features) of a data set or image folder, any size"
    p = sub.add_parser("ref-stats", help=short, description=run_ref_stats.__doc__)
    p.add_argument("data", metavar="DATA_OR_FOLDER")
    p.add_argument("--out", required=True, metavar="STATS_NPZ")
    p.add_argument("--size", type=int, default=None, help="center-crop size for data sets (e.g. 256)")
    p.add_argument("--split", default="auto", help="auto (val when PATH/val exists) | train | val")
    p.add_argument("--limit", type=int, default=0, help="use at most N images of a data set (0: all)")
    p.add_argument("--features", action="store_true", help="also store the features (for precision/recall)")
    add_inception_args(p)
    p.set_defaults(func=run_ref_stats)


def run_ref_stats(args: argparse.Namespace) -> int:
    """Compute FID reference statistics: an .npz with mu and sigma (the layout of the JiT release's
    jit_in256_stats.npz) from 'shapes', an image folder (ImageNet layout: PATH/val by default), a prepared
    cache, a sample folder or an .npz, at any resolution."""
    from jitkit.eval.fid import feature_stats, save_stats
    from jitkit.eval.fidelity import extract_features
    from jitkit.eval.sources import crop_size_needed, open_source

    if not str(args.out).lower().endswith(".npz"):
        raise ValueError(f"--out must be a .npz file, found {args.out!r}")
    if args.size is None and crop_size_needed(args.data):
        raise ValueError(f"--size is needed to center-crop the images of {args.data!r} (e.g. --size 256)")
    src = open_source(args.data, size=args.size, split=args.split, limit=args.limit)
    ext = inception(args)
    print(f"jitkit ref-stats: {src.description}; Inception weights {ext.weights}", file=sys.stderr)
    feats = extract_features(src.batches(args.batch_size), ext, src.n, progress=not args.no_progress)
    mu, sigma = feature_stats(feats["2048"])
    save_stats(args.out, mu, sigma, features=feats["2048"] if args.features else None, n=src.n, size=src.size)
    print(f"jitkit ref-stats: wrote {args.out} (mu {list(mu.shape)}, sigma {list(sigma.shape)}, n {src.n})")
    return 0
