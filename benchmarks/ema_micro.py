"""The two EMA updates of a JiT-B/16 training step, timed alone (131 M parameters, 183 tensors).

python benchmarks/ema_micro.py [--threads 2] [--model JiT-B/16]

Variants: torch._foreach_mul_ + _foreach_add_ (jitkit before), one torch._foreach_lerp_ per decay (jitkit
now), a per-tensor lerp_ loop, and two lerp_ calls over one flat buffer (a bound: what a flat-parameter
layout would allow). Prints one JSON object with the best and median milliseconds of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from jitkit.models.registry import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="JiT-B/16")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = [p.detach() for p in build_model(args.model).parameters()]
    decays = (0.9999, 0.9996)
    shadows = [[p.clone() for p in params] for _ in decays]
    flat_p = torch.cat([p.flatten() for p in params])
    flat_s = [flat_p.clone() for _ in decays]

    def mul_add() -> None:
        for s, d in zip(shadows, decays):
            torch._foreach_mul_(s, d)
            torch._foreach_add_(s, params, alpha=1 - d)

    def foreach_lerp() -> None:
        for s, d in zip(shadows, decays):
            torch._foreach_lerp_(s, params, 1 - d)

    def loop_lerp() -> None:
        for s, d in zip(shadows, decays):
            for e, p in zip(s, params):
                e.lerp_(p, 1 - d)

    def flat_lerp() -> None:
        for s, d in zip(flat_s, decays):
            s.lerp_(flat_p, 1 - d)

    out: dict = {
        "model": args.model,
        "threads": args.threads,
        "params": sum(p.numel() for p in params),
        "tensors": len(params),
        "torch": torch.__version__,
    }
    for name, fn in (
        ("foreach_mul_add", mul_add),
        ("foreach_lerp", foreach_lerp),
        ("loop_lerp", loop_lerp),
        ("flat_lerp", flat_lerp),
    ):
        fn()
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        out[name] = {"best_ms": round(min(ts), 1), "median_ms": round(statistics.median(ts), 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
