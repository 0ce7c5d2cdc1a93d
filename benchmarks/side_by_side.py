"""jitkit and the reference code timed in one process, interleaved step by step.

On a shared or throttled machine the matmul speed drifts by tens of percent within minutes (benchmarks/README.md),
so two separately timed processes can differ by more than the effect being measured. Here every round times
one step of each variant back to back, preceded by a short GEMM probe, and the report gives per variant the
median img/s, the MFU against the probe of the same round (in the variant's own precision: bf16 variants
against a bf16 GEMM probe), and the ratio to each reference variant as the
median of the per-round ratios.

    python benchmarks/side_by_side.py --reference-dir DIR --mode train --batch-size 2 --repeats 10
    python benchmarks/side_by_side.py --reference-dir DIR --mode forward --batch-size 2 --repeats 10
    python benchmarks/side_by_side.py --reference-dir DIR --mode sample --batch-size 4 --repeats 2
    python benchmarks/side_by_side.py --reference-dir DIR --mode sample --sample-steps 10 --batch-size 4 \
        --repeats 3 --jitkit eager,compile,eager:auto,compile:auto      # jitkit in float32 and in its default
    python benchmarks/side_by_side.py --reference-dir DIR --mode memory --batch-size 8 --jitkit eager

``--mode memory`` measures the peak training-step memory (RSS growth over "model and batch built", two steps)
of each side in a fresh process instead of timing.

DIR holds the reference's ``model_jit.py``, ``denoiser.py`` and ``util/`` (a checkout of LTH14/JiT in which the
``.cuda()`` calls are replaced by the inputs' device so that it runs on a CPU; an optional ``DIR/deps`` is put
on the path for its einops). Nothing of the reference is part of jitkit. Its training step is the body of its
``train_one_epoch``: forward, ``loss.item()``, ``zero_grad``, backward, ``torch.optim.AdamW`` with its
``add_weight_decay`` groups and β = (0.9, 0.95), ``update_ema()``. The reference compiles its blocks with
``@torch.compile`` as released; with ``TORCHDYNAMO_DISABLE=1`` in the environment both sides run eagerly.
Warm-up: ``--warmup`` rounds of every variant before the timed ones; for sampling, one 2-step run of each
(which compiles both batch shapes: outside the guidance interval and inside) instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from jitkit.bench.flops import flops_per_image
from jitkit.bench.hardware import PeakMemory, cpu_name, gemm_probe
from jitkit.bench.measure import prepare_forward, prepare_sample, prepare_train
from jitkit.bench.settings import BenchSettings
from jitkit.config import model_config
from jitkit.fileio import atomic_write_text
from jitkit.models.linear import cpu_linear_backend, cpu_linear_backward
from jitkit.models.registry import precision_for_model
from jitkit.runtime import retain_freed_memory
from jitkit.train.optim import param_groups


def reference_denoiser(ref_dir: Path, steps: int, cfg: float) -> torch.nn.Module:
    """The reference's Denoiser for JiT-B/16 at 256 px with the arguments of its ImageNet recipe."""
    for p in (ref_dir / "deps", ref_dir):
        if p.is_dir():
            sys.path.insert(0, str(p))
    if not (ref_dir / "denoiser.py").is_file():
        raise SystemExit(f"--reference-dir {ref_dir} has no denoiser.py (expected a checkout of LTH14/JiT)")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 128)
    from denoiser import Denoiser  # the reference's module

    args = SimpleNamespace(
        model="JiT-B/16",
        img_size=256,
        class_num=1000,
        attn_dropout=0.0,
        proj_dropout=0.0,
        label_drop_prob=0.1,
        P_mean=-0.8,
        P_std=0.8,
        t_eps=0.05,
        noise_scale=1.0,
        ema_decay1=0.9999,
        ema_decay2=0.9996,
        sampling_method="heun",
        num_sampling_steps=steps,
        cfg=cfg,
        interval_min=0.1,
        interval_max=1.0,
    )
    torch.manual_seed(0)
    return Denoiser(args)


def reference_steps(
    den: torch.nn.Module, mode: str, batch: int, mem: PeakMemory | None = None
) -> Callable[[], None]:
    """One timed unit of the reference; with ``mem`` (training only) its peak memory is measured as jitkit's
    is: from "model and batch built" (before the optimiser and EMAs exist) over two steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 256, 256, generator=g) * 2 - 1
    y = torch.randint(0, 1000, (batch,), generator=g)
    if mode == "train":
        den.train()
        if mem is not None:
            mem.start()
        # its add_weight_decay groups (no decay on biases and 1-D parameters) are jitkit's param_groups
        opt = torch.optim.AdamW(param_groups(den, 0.0), lr=1e-4, betas=(0.9, 0.95))
        den.ema_params1 = copy.deepcopy(list(den.parameters()))
        den.ema_params2 = copy.deepcopy(list(den.parameters()))

        def step() -> None:
            loss = den(x, y)
            loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            den.update_ema()

        if mem is not None:
            step()
            step()
        return step
    den.eval()
    if mode == "forward":
        t = torch.rand(batch, generator=g)

        def fwd() -> None:
            with torch.no_grad():
                den.net(x, t, y)

        return fwd

    def sample() -> None:
        with torch.no_grad():
            den.generate(y)

    # warm-up (compilation for both batch shapes: outside the guidance interval and inside) with a 2-step run
    steps = den.steps
    den.steps = 2
    sample()
    den.steps = steps
    return sample


def jitkit_settings(
    a: argparse.Namespace, compiled: bool, warmup: int, precision: str = "fp32"
) -> BenchSettings:
    """jitkit's side: JiT-B/16 at 256 px on the CPU, with this run's batch, threads and sampler.

    ``precision`` fp32 | bf16 | auto; ``auto`` is resolved as ``jitkit train`` / ``jitkit sample`` resolve it
    (:func:`jitkit.models.registry.precision_for_model`: measured for this model and batch).
    """
    s = BenchSettings(
        model="JiT-B/16",
        img_size=256,
        batch_size=a.batch_size,
        device="cpu",
        threads=a.threads,
        warmup=warmup,
        compile=compiled,
        sample_steps=a.sample_steps,
        cfg=a.cfg,
    )
    if precision == "auto":
        images = a.batch_size * (2 if a.mode == "sample" else 1)  # sampling: 2B images under guidance
        precision = precision_for_model("auto", "cpu", s.model_config(), images, train=a.mode == "train")[0]
    return s.replace(precision=precision)


def jitkit_variants(spec: str) -> list[tuple[str, bool, str]]:
    """``--jitkit`` → [(name, compiled, precision)]: comma-separated ``eager`` | ``compile``, each optionally
    with ``:fp32`` (the default), ``:bf16`` or ``:auto``. The float32 ones keep the names of earlier results."""
    out = []
    for item in [k.strip() for k in spec.split(",") if k.strip()]:
        kind, _, precision = item.partition(":")
        precision = precision or "fp32"
        if kind not in ("eager", "compile") or precision not in ("fp32", "bf16", "auto"):
            raise SystemExit(f"--jitkit items are eager|compile[:fp32|bf16|auto], found {item!r}")
        name = "compiled" if kind == "compile" else "eager"
        out.append(
            (
                f"jitkit ({name})" if precision == "fp32" else f"jitkit ({name}, {precision})",
                kind == "compile",
                precision,
            )
        )
    return out


def _loadavg() -> list[str] | None:
    return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None


def _finish(a: argparse.Namespace, res: dict, load_start: list[str] | None, **settings) -> int:
    """Add the machine, the load and the time to ``res``, write it to ``--out`` (atomically) and print it."""
    forward = cpu_linear_backend()  # what jitkit's float32 CPU linears ran on (resolved once per process)
    res["settings"] = {
        "threads": a.threads,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "python": sys.version.split()[0],
        "jitkit_cpu_linear": {
            "forward": forward,
            "backward": list(cpu_linear_backward()) if forward == "onednn" else ["aten", "aten"],
        },
        **settings,
        "loadavg_start": load_start,
        "loadavg_end": _loadavg() if load_start else None,
        "measured_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(res, indent=1)
    if a.out is not None:
        atomic_write_text(a.out, text + "\n")
    print(text)
    return 0


def _memory_worker(a: argparse.Namespace) -> int:
    """In a fresh process: the peak training-step memory of one variant (``--memory-worker NAME``)."""
    torch.set_num_threads(a.threads)
    mem = PeakMemory(torch.device("cpu"))
    if a.memory_worker == "reference":
        reference_steps(
            reference_denoiser(a.reference_dir, a.sample_steps, a.cfg), "train", a.batch_size, mem
        )
        mib = mem.stop()
    else:
        s = jitkit_settings(a, compiled=a.memory_worker == "compile", warmup=2)
        mib = prepare_train(s, torch.device("cpu"), mem)[1]["peak_mem_mib"]
    print(json.dumps({"peak_mem_mib": mib, "peak_mem_kind": mem.kind}))
    return 0


def memory_main(a: argparse.Namespace, malloc: str) -> int:
    """Peak training-step memory of the reference and of each jitkit variant, each in a fresh process."""
    load_start = _loadavg()
    names = {"reference": "reference"} | {
        f"jitkit ({'compiled' if k == 'compile' else 'eager'})": k for k in a.jitkit.split(",") if k
    }
    res: dict = {"mode": "memory", "batch_size": a.batch_size, "variants": {}, "ratios": {}}
    for name, worker in names.items():
        cmd = [sys.executable, __file__, "--reference-dir", str(a.reference_dir), "--mode", "memory"]
        cmd += ["--batch-size", str(a.batch_size), "--threads", str(a.threads), "--memory-worker", worker]
        print(f"memory: {name} in a fresh process", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"memory worker {worker} failed:\n{out.stderr[-2000:]}")
        res["variants"][name] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = res["variants"]["reference"]["peak_mem_mib"]
    for name, v in res["variants"].items():
        if name != "reference":
            res["ratios"][name] = {"reference": v["peak_mem_mib"] / ref}
    return _finish(a, res, load_start, malloc=malloc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", type=Path, required=True)
    ap.add_argument("--mode", choices=("train", "forward", "sample", "memory"), required=True)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=2.9)
    ap.add_argument(
        "--jitkit",
        default="eager,compile",
        help="jitkit variants, comma-separated: eager | compile, each with :fp32 (default), :bf16 or :auto "
        "(e.g. eager,compile,eager:auto,compile:auto; --mode memory: eager, compile in float32)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here (atomically)")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    malloc = retain_freed_memory()  # both sides alike: no page faults of re-mapped buffers in the timings
    if a.memory_worker:
        return _memory_worker(a)
    if a.mode == "memory":
        return memory_main(a, malloc)
    torch.set_num_threads(a.threads)
    load_start = _loadavg()

    ref = reference_denoiser(a.reference_dir, a.sample_steps, a.cfg)
    blk = type(ref.net.blocks[0]).forward
    ref_compiled = hasattr(blk, "_torchdynamo_orig_callable") and os.environ.get("TORCHDYNAMO_DISABLE") != "1"
    ref_name = "reference (compiled)" if ref_compiled else "reference (eager)"
    variants: dict[str, Callable[[], None]] = {ref_name: reference_steps(ref, a.mode, a.batch_size)}
    resolved = {ref_name: "fp32"}  # the precision each variant ran in: its MFU is against that GEMM peak
    for name, compiled, precision in jitkit_variants(a.jitkit):
        # sample: one 2-step run (both batch shapes) as warm-up
        s = jitkit_settings(a, compiled=compiled, warmup=1 if a.mode == "sample" else 0, precision=precision)
        resolved[name] = s.precision
        if a.mode == "train":
            variants[name] = prepare_train(s, torch.device("cpu"))[0]
        elif a.mode == "forward":
            variants[name] = prepare_forward(s, torch.device("cpu"))
        else:
            variants[name] = prepare_sample(s, torch.device("cpu"))[0]
        print(f"prepared {name}", file=sys.stderr, flush=True)

    warmup = a.warmup if a.mode != "sample" else 0  # sampling variants were warmed up by a 2-step run each
    for r in range(warmup):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            print(
                f"warm-up {r + 1}/{warmup} {name}: {time.perf_counter() - t0:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    probes = {pr: gemm_probe(torch.device("cpu"), dtypes[pr]) for pr in set(resolved.values())}
    times: dict[str, list[float]] = {n: [] for n in variants}
    peaks: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(a.repeats):
        for name, fn in variants.items():
            peaks[name].append(probes[resolved[name]]())
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        line = "  ".join(f"{n} {times[n][-1]:.3f}s" for n in variants)
        print(f"round {r + 1}/{a.repeats}: {line}", file=sys.stderr, flush=True)

    fl = flops_per_image(model_config("JiT-B/16", img_size=256))
    flops = {"train": fl["train"], "forward": fl["forward"]}.get(a.mode)
    res: dict = {"mode": a.mode, "batch_size": a.batch_size, "variants": {}, "ratios": {}}
    for n in variants:
        ts, pk = times[n], peaks[n]
        v = {
            "img_per_s": a.batch_size / statistics.median(ts),
            "img_per_s_best": a.batch_size / min(ts),
            "seconds": [round(t, 4) for t in ts],
            "gemm_probe_flops": [round(p) for p in pk],
            "precision": resolved[n],
        }
        if flops is not None:
            v["mfu"] = statistics.median(a.batch_size * flops / t / p for t, p in zip(ts, pk))
        res["variants"][n] = v
    for n in variants:
        if n.startswith("jitkit"):
            res["ratios"][n] = {ref_name: statistics.median(r / j for r, j in zip(times[ref_name], times[n]))}
    return _finish(
        a,
        res,
        load_start,
        repeats=a.repeats,
        warmup=warmup,
        sample_steps=a.sample_steps if a.mode == "sample" else None,
        cfg=a.cfg if a.mode == "sample" else None,
        reference_compiled=ref_compiled,
        malloc=malloc,
    )


if __name__ == "__main__":
    sys.exit(main())
