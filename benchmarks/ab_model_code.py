"""Before/after of jitkit's own network code: an older commit's models/layers.py + models/jit.py against the
working tree, same weights, interleaved in one process.

    python benchmarks/ab_model_code.py --before f8a8cf5 --threads 1 --clock cpu

``--clock cpu`` times process CPU seconds (load-robust at one thread); ``wall`` needs a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load_old(commit: str):
    """The JiT class of ``commit``, loaded from git into private module names (nothing on disk changes)."""

    def src(path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
        ).stdout

    layers = type(sys)("_old_layers")
    exec(compile(src("src/jitkit/models/layers.py"), "old_layers.py", "exec"), layers.__dict__)
    sys.modules["_old_layers"] = layers
    jit = type(sys)("_old_jit")
    code = src("src/jitkit/models/jit.py").replace("jitkit.models.layers", "_old_layers")
    exec(compile(code, "old_jit.py", "exec"), jit.__dict__)
    return jit.JiT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="git commit of the 'before' network code")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--model", default="JiT-B/16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    now = time.process_time if args.clock == "cpu" else time.perf_counter

    from jitkit.config import DiffusionConfig, model_config
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.jit import JiT

    cfg = model_config(args.model)
    torch.manual_seed(0)
    new = JiT(cfg)
    old = load_old(args.before)(cfg)
    old.load_state_dict(new.state_dict())
    B = args.batch_size
    x, t, y = (
        torch.randn(B, 3, cfg.img_size, cfg.img_size),
        torch.rand(B),
        torch.randint(0, cfg.num_classes, (B,)),
    )
    with torch.no_grad():
        print("fwd diff", (new.eval()(x, t, y) - old.eval()(x, t, y)).abs().max().item())

    def fwd(m):
        with torch.no_grad():
            m.eval()(x, t, y)

    dens = {
        k: Denoiser(m, DiffusionConfig(), cfg.num_classes).train()
        for k, m in (("before", old), ("after", new))
    }

    def fb(d):
        d.loss(x, y).backward()

    for name, fn, objs, reps in (
        ("forward", fwd, {"before": old, "after": new}, 8),
        ("fwd+bwd", fb, dens, 5),
    ):
        for o in objs.values():
            fn(o)
        ts: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(reps):
            for k, o in objs.items():
                t0 = now()
                fn(o)
                ts[k].append(now() - t0)
        b, a = statistics.median(ts["before"]), statistics.median(ts["after"])
        print(
            f"{name} B={B} threads={args.threads} clock={args.clock}: before {b:.3f}s after {a:.3f}s  "
            f"speedup {b / a:.3f}x (min {min(ts['before']):.3f} -> {min(ts['after']):.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
