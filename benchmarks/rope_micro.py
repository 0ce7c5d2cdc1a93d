"""Before/after of the RoPE rewrite at JiT-B/16 shapes (q of [B=2, H=12, T=288, h=64] as the attention makes it).

before: split the pairs, negate, re-stack (u·cos + rot(u)·sin with rot built by unbind/stack) — jitkit's first
        version; after: :func:`jitkit.models.layers.apply_rope`, one complex product on a view.

    python benchmarks/rope_micro.py [--threads 2] > benchmarks/results/rope.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from jitkit.models.layers import apply_rope, rope_tables


def rope_before(u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    u1, u2 = u.unflatten(-1, (-1, 2)).unbind(-1)
    rot = torch.stack((-u2, u1), dim=-1).flatten(-2)
    return u * cos.to(u.dtype) + rot * sin.to(u.dtype)


def timeit(fn, n: int = 60) -> float:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, T, H, h = 2, 288, 12, 64
    cos, sin = rope_tables(16, h, prefix=32)
    qkv = torch.randn(B, T, 3, H, h).permute(2, 0, 3, 1, 4)
    q = qkv[0]
    res = {
        "shape": [B, H, T, h],
        "threads": args.threads,
        "torch": torch.__version__,
        "loadavg_start": os.getloadavg(),
    }
    res["max_abs_diff"] = (apply_rope(q, cos, sin) - rope_before(q, cos, sin)).abs().max().item()
    res["forward_ms_before"] = timeit(lambda: rope_before(q, cos, sin))
    res["forward_ms_after"] = timeit(lambda: apply_rope(q, cos, sin))
    qg = q.detach().clone().requires_grad_(True)
    w = torch.randn(B, H, T, h)

    def fb(f):
        def run():
            (f(qg, cos, sin) * w).sum().backward()
            qg.grad = None

        return run

    res["fwd_bwd_ms_before"] = timeit(fb(rope_before), 30)
    res["fwd_bwd_ms_after"] = timeit(fb(apply_rope), 30)
    # the residual gates: x + g·a (two kernels) vs addcmul (one)
    x, a, g = torch.randn(B, T, H * h), torch.randn(B, T, H * h), torch.randn(B, 1, H * h)
    res["gate_ms_before"] = timeit(lambda: x + g * a)
    res["gate_ms_after"] = timeit(lambda: torch.addcmul(x, g, a))
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
