"""Quality parity of bf16 training: the loss curves and shapes metrics of two runs that differ only in precision.

    jitkit train --out runs/fp32 --precision fp32
    jitkit train --out runs/bf16 --precision bf16
    python benchmarks/precision_parity.py runs/fp32 runs/bf16 --png docs/img/precision-parity.png

Prints a markdown table (final metrics, wall time, the loss curves' relative gap per logged step: median and
largest) and draws both curves with their ratio. The logged loss is the mean over the steps since the last
log line, so the curves compare like with like; the per-step losses of the two runs differ through bf16
rounding and are not expected to match one by one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(run: Path) -> dict:
    log = read_jsonl(run / "log.jsonl")
    ev = [r for r in read_jsonl(run / "eval.jsonl") if r.get("metric") == "shapes"]
    asked = json.loads((run / "config.json").read_text())["train"]["precision"]
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    return {
        "run": str(run),
        "precision": f"{asked} → {meta.get('precision', '?')}",
        "steps": [r["step"] for r in log],
        "loss": [r["loss"] for r in log],
        "seconds": log[-1]["time"],
        "accuracy": ev[-1]["accuracy"] if ev else None,
        "mean_iou": ev[-1]["mean_iou"] if ev else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path, help="the fp32 run folder")
    ap.add_argument("other", type=Path, help="the bf16 run folder")
    ap.add_argument("--png", type=Path, default=None, help="write the curves here")
    ap.add_argument("--skip", type=int, default=2, help="log lines left out of the gap (warm-up; default 2)")
    a = ap.parse_args(argv)
    ref, oth = summary(a.reference), summary(a.other)
    if ref["steps"] != oth["steps"]:
        raise SystemExit("the two runs logged different steps; compare runs of the same recipe")
    gaps = [abs(b - r) / r for r, b in zip(ref["loss"][a.skip :], oth["loss"][a.skip :])]
    print("| run | precision (asked → ran) | training s | accuracy | mean IoU | final logged loss |")
    print("|---|---|---|---|---|---|")
    for s in (ref, oth):
        print(
            f"| {s['run']} | {s['precision']} | {s['seconds']:.1f} | {s['accuracy']:.3f} | {s['mean_iou']:.3f} "
            f"| {s['loss'][-1]:.4f} |"
        )
    print(
        f"\nlogged-loss gap |bf16 − fp32| / fp32 over {len(gaps)} log lines (after {a.skip}): "
        f"median {100 * statistics.median(gaps):.2f} %, largest {100 * max(gaps):.2f} %"
    )
    if a.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True, height_ratios=[2, 1])
        ax.plot(ref["steps"], ref["loss"], label=f"fp32 ({a.reference.name})")
        ax.plot(oth["steps"], oth["loss"], label=f"bf16 ({a.other.name})", linestyle="--")
        ax.set_yscale("log")
        ax.set_ylabel("logged training loss")
        ax.legend()
        bx.plot(ref["steps"], [b / r for r, b in zip(ref["loss"], oth["loss"])], color="k")
        bx.axhline(1.0, color="0.6", linewidth=0.8)
        bx.set_ylabel("bf16 / fp32")
        bx.set_xlabel("step")
        fig.tight_layout()
        a.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.png, dpi=120)
        print(f"wrote {a.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
