"""Solution error and sample quality of every solver against the number of network evaluations (NFE).

On a trained run: every solver (and time grid) integrates the flow at several NFE budgets from the same noise
(image i from seed (SEED, i), ``--per-class`` images per class, the run's CFG and interval) and is compared
with a reference solution, Heun with ``--ref-steps`` steps on the uniform grid:

* ``rms``: the RMS error of the final images against the reference (all pixels of all images, model units:
  pixels in [−1, 1]); ``median``: the median over images of each image's RMS error (a few images that land
  in another mode — another position of the shape — dominate ``rms`` at low NFE);
* the run's data-set metric (shapes: accuracy and mean IoU), and FID with ``--fid-ref STATS --inception-weights``.

Also measured, as kept-on-purpose variants: ``dpm++2m-lambda``, DPM-Solver++(2M) with its polynomial in the
log-SNR λ (the published form, :func:`jitkit.bench.variants.lambda_multistep_update`) instead of in t.

``--inversion`` adds the reconstruction error of ODE inversion (``jitkit invert``) against the steps and the
fixed-point iterations, on held-out images of the run's data set.

    jitkit train --out /tmp/solvers-run --no-progress --threads 1
    python benchmarks/solvers.py --run /tmp/solvers-run --out benchmarks/results/solvers.json \
        --plot docs/img/solvers-nfe.png --inversion benchmarks/results/solvers_inversion.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SOLVERS = ("euler", "heun", "dpm++2m", "dpm++3m", "dpm++2m-pc", "dpm++3m-pc", "dpm++2m-lambda")
NFES = (4, 5, 6, 8, 10, 12, 16, 20, 22, 30, 40)


def _steps_for(method: str, nfe: int) -> int:
    """The steps giving at most ``nfe`` network evaluations (Heun: 2K − 1)."""
    return max(1, (nfe + 1) // 2) if method == "heun" else nfe


def _sample(den, z0, y, scfg, method: str, batch: int) -> torch.Tensor:
    import jitkit.diffusion.sampling as sampling
    from jitkit.bench.variants import lambda_multistep_update
    from jitkit.diffusion.generate import sample_denoiser
    from jitkit.diffusion.solvers import multistep_update

    sampling.multistep_update = lambda_multistep_update if method == "dpm++2m-lambda" else multistep_update
    try:
        out = [
            sample_denoiser(den, z0[i : i + batch], y[i : i + batch], scfg) for i in range(0, len(z0), batch)
        ]
    finally:
        sampling.multistep_update = multistep_update
    return torch.cat(out)


def _git() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def _fit_order(rows: list[dict[str, Any]], key: str) -> float | None:
    """The slope of log(error) against log(NFE) over the largest half of the budgets (the solver's order)."""
    pts = [(r["nfe"], r[key]) for r in rows if r[key] > 0]
    pts = sorted(pts)[len(pts) // 2 :]
    if len(pts) < 2:
        return None
    x, e = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(-np.polyfit(x, e, 1)[0])


def solver_table(args: argparse.Namespace) -> dict[str, Any]:
    from jitkit.bench.hardware import cpu_name
    from jitkit.checkpoint import load_denoiser
    from jitkit.diffusion.generate import balanced_labels, image_shape, indexed_noise
    from jitkit.diffusion.sampling import network_evaluations, to_uint8

    den, cfg, classes = load_denoiser(args.run)
    base = cfg.sampler
    y = torch.as_tensor(balanced_labels(cfg.model.num_classes, per_class=args.per_class))
    z0 = indexed_noise(range(len(y)), image_shape(den), den.cfg.noise_scale, args.seed)
    t0 = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    key = {"run": str(Path(args.run).resolve()), "n": len(y), "seed": args.seed, "ref_steps": args.ref_steps}
    ref = None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved.get("key") == json.dumps(key, sort_keys=True):
            ref = saved["ref"]
    if ref is None:
        ref = _sample(
            den, z0, y, base.replace(method="heun", steps=args.ref_steps, time_grid="uniform"), "heun", 64
        )
        if cache is not None:
            torch.save({"key": json.dumps(key, sort_keys=True), "ref": ref}, cache)
    print(
        f"reference: heun {args.ref_steps} steps, {len(y)} images, {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )

    metric = None
    if str(cfg.data.data).lower() == "shapes":
        from jitkit.eval.shapes_metric import shapes_metrics

        metric = shapes_metrics
    fid = None
    if args.fid_ref:
        from jitkit.eval.fid import load_stats
        from jitkit.eval.fidelity import InceptionFeatures, extract_features, image_metrics

        stats, ext = load_stats(args.fid_ref), InceptionFeatures(args.inception_weights, torch.device("cpu"))

        def fid(u8: torch.Tensor) -> float:
            feats = extract_features(
                (u8[i : i + 50] for i in range(0, len(u8), 50)), ext, len(u8), progress=False
            )
            return float(image_metrics(feats, stats, isc=False, prc=False)["fid"])

    def evaluate(images: torch.Tensor) -> dict[str, Any]:
        e = (images - ref).pow(2).flatten(1).mean(dim=1)  # [N] per-image MSE
        out = {"rms": float(e.mean().sqrt()), "median": float(e.sqrt().median())}
        u8 = to_uint8(images)
        if metric is not None:
            m = metric(u8, y)
            out.update(accuracy=m["accuracy"], mean_iou=m["mean_iou"])
        if fid is not None:
            out["fid"] = fid(u8)
        return out

    rows = [
        {
            "solver": "reference",
            "time_grid": "uniform",
            "steps": args.ref_steps,
            "nfe": 2 * args.ref_steps - 1,
            **evaluate(ref),
        }
    ]
    combos = [(m, g) for m in args.solvers for g in args.grids]
    for method, grid in combos:
        for nfe in args.nfes:
            k = _steps_for(method, nfe)
            scfg = base.replace(
                method="dpm++2m" if method == "dpm++2m-lambda" else method, steps=k, time_grid=grid
            )
            if any(r["solver"] == method and r["time_grid"] == grid and r["steps"] == k for r in rows):
                continue
            row = {"solver": method, "time_grid": grid, "steps": k, "nfe": network_evaluations(scfg)}
            row.update(evaluate(_sample(den, z0, y, scfg, method, 64)))
            rows.append(row)
            extra = f" acc {row['accuracy']:.3f} IoU {row['mean_iou']:.3f}" if "accuracy" in row else ""
            print(
                f"{method:15s} {grid:8s} {k:3d} steps {row['nfe']:3d} NFE: rms {row['rms']:.4f} median {row['median']:.4f}{extra}",
                file=sys.stderr,
                flush=True,
            )
    orders = {
        f"{m}/{g}": {
            "rms": _fit_order([r for r in rows if r["solver"] == m and r["time_grid"] == g], "rms"),
            "median": _fit_order([r for r in rows if r["solver"] == m and r["time_grid"] == g], "median"),
        }
        for m, g in combos
    }
    return {
        "what": "solution error (vs Heun reference) and sample quality against NFE",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": _git(),
        "run": str(args.run),
        "model": cfg.model.name,
        "sampler_base": base.to_dict(),
        "num_images": len(y),
        "per_class": args.per_class,
        "seed": args.seed,
        "reference": f"heun {args.ref_steps} steps, uniform grid",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_start": os.getloadavg()[0],
        "rows": rows,
        "fitted_order": orders,
    }


def plot(res: dict[str, Any], path: str, grids: tuple[str, ...] = ("uniform", "logsnr")) -> None:
    """Error against NFE on log-log axes, one line per solver and grid (solid uniform, dashed logsnr): the
    slope is the solver's order. The edm grid's rows stay in the JSON (off the scale at few steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from jitkit.fileio import atomic_save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    colours = {
        "euler": "C0",
        "heun": "C1",
        "dpm++2m": "C2",
        "dpm++3m": "C3",
        "dpm++2m-lambda": "C4",
        "dpm++2m-pc": "C5",
        "dpm++3m-pc": "C6",
    }
    styles = {"uniform": "-", "logsnr": "--", "edm": ":"}
    rows = [r for r in res["rows"] if r["solver"] != "reference" and r["time_grid"] in grids]
    panels = (
        (axes[0], "rms", "RMS error, all pixels"),
        (axes[1], "median", "median of the per-image RMS errors"),
    )
    for ax, key, title in panels:
        for m in dict.fromkeys(r["solver"] for r in rows):
            for g in grids:
                pts = sorted((r["nfe"], r[key]) for r in rows if r["solver"] == m and r["time_grid"] == g)
                if not pts:
                    continue
                order = res["fitted_order"].get(f"{m}/{g}", {}).get(key)
                label = f"{m}, {g}" + (f" (slope {order:.1f})" if order is not None else "")
                ax.plot(*zip(*pts), styles.get(g, "-"), color=colours.get(m), marker="o", ms=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([4, 6, 10, 20, 40], ["4", "6", "10", "20", "40"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel("error vs Heun 500 steps ([-1, 1] pixels)")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(title, fontsize=10)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.suptitle(
        f"{res['model']} shapes run: {res['num_images']} images, cfg {res['sampler_base']['cfg']}; legend: the "
        "slope of the median error over the larger half of the budgets (the order)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    atomic_save_figure(fig, path)


def inversion_table(args: argparse.Namespace) -> dict[str, Any]:
    from jitkit.checkpoint import load_denoiser
    from jitkit.data import build_dataset
    from jitkit.eval.inversion import reconstruction_study

    den, cfg, _ = load_denoiser(args.run)
    ds = build_dataset(cfg.data.replace(per_class=2, img_size=cfg.model.img_size), split="val")
    images = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
    labels = np.asarray([ds[i][1] for i in range(len(ds))])
    rows = []
    for method in ("euler", "heun", "dpm++2m"):
        for cfg_scale in (1.0, float(cfg.sampler.cfg)):
            for iters in (1, 2, 4):
                scfg = cfg.sampler.replace(method=method, cfg=cfg_scale)
                for r in reconstruction_study(
                    den, images, labels, scfg, (5, 10, 20, 40), iters=iters, batch_size=64
                ):
                    rows.append({**r, "cfg": cfg_scale})
                    print(
                        f"invert {method:8s} cfg {cfg_scale:g} iters {iters} steps {r['steps']:3d}: rms {r['rms']:.4f} "
                        f"({r['mean_abs_u8']:.2f} levels) noise std {r['noise_std']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    return {
        "what": "ODE inversion then sampling: reconstruction error of held-out data images",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": _git(),
        "run": str(args.run),
        "num_images": len(images),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/solvers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run folder (jitkit train)")
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-steps", type=int, default=500)
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--grids", default="uniform,logsnr,edm")
    p.add_argument("--nfes", default=",".join(map(str, NFES)))
    p.add_argument("--cache", default=None, help="keep the reference solution here (a .pt file)")
    p.add_argument("--fid-ref", default=None, help="FID reference statistics (also needs Inception weights)")
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON results")
    p.add_argument("--plot", default=None, help="PNG: error vs NFE, log-log")
    p.add_argument("--inversion", default=None, help="also measure inversion; JSON results here")
    p.add_argument("--skip-solvers", action="store_true", help="only the inversion study")
    p.add_argument("--replot", default=None, metavar="JSON", help="only redraw --plot from an earlier --out")
    args = p.parse_args(argv)
    args.solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    args.grids = [g.strip() for g in args.grids.split(",") if g.strip()]
    args.nfes = [int(n) for n in args.nfes.split(",") if n.strip()]
    bad = [s for s in args.solvers if s not in SOLVERS]
    if bad:
        p.error(f"--solvers: unknown {bad}; choose from {', '.join(SOLVERS)}")
    torch.set_num_threads(args.threads)
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.plot or "solvers-nfe.png")
        return 0
    if not args.skip_solvers:
        res = solver_table(args)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        if args.plot:
            plot(res, args.plot)
        best = {k: v for k, v in res["fitted_order"].items()}
        print(json.dumps(best, indent=1))
    if args.inversion:
        inv = inversion_table(args)
        Path(args.inversion).write_text(json.dumps(inv, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
