"""Steady-state throughput, peak memory, FLOPs and MFU of one JiT configuration.

A configuration (:class:`BenchSettings`) is measured by :func:`run_config`:

* **train**: one timed step = ``Denoiser.loss`` (label drop, t ~ logit-normal, noise, z_t, v-loss) +
  backward + AdamW (:func:`jitkit.train.optim.make_optimizer`: fused / foreach / per-tensor loop /
  fused-ema) + the two EMAs, on a batch that lives in memory, so the model (not data loading) is what is
  timed. No ``.item()`` inside the step; the device is synchronised once per timed step.
* **forward**: the network alone under ``torch.no_grad`` (eval mode) on a batch of noisy images.
* **sample**: a full run of the solver ``sampler`` (default Heun) of
  :func:`jitkit.diffusion.generate.sample_denoiser` with ``sample_steps`` steps and CFG ``cfg`` on the interval [0.1, 1] (batched conditional/unconditional passes; unconditional
  pass skipped where the scale is 1).

The "before" variants that some settings select (``ema=loop|lerp``, ``cfg_mode=separate``) live in
:mod:`jitkit.bench.variants`. Warm-up iterations are excluded; ``repeats`` timed iterations give a median
(reported as the img/s) and a best. FLOPs come from :mod:`jitkit.bench.flops`. MFU = achieved FLOP/s ÷ the
dense GEMM throughput in the same precision on the same device, paired: a short GEMM probe
(:func:`jitkit.bench.hardware.gemm_probe`) runs just before every timed repeat and each repeat is divided by
its own probe (median reported), so drift of the machine's speed does not enter the ratio.
``mfu_*_vs_best_peak`` divides by the best call of a separate 2-second peak measurement
(:func:`jitkit.bench.hardware.gemm_peak`) instead.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from jitkit.bench.flops import flops_per_image
from jitkit.bench.hardware import PeakMemory, gemm_peak, gemm_probe
from jitkit.bench.measure import prepare_forward, prepare_sample, prepare_train, set_threads
from jitkit.bench.settings import BenchSettings, settings_record
from jitkit.models.registry import precision_for_model
from jitkit.runtime import amp_dtype, resolve_device, retain_freed_memory, set_tf32, synchronize


def _timed(fn: Callable[[], Any], device: torch.device, clock: str = "wall") -> float:
    """Seconds of one call: wall clock, or (``clock="cpu"``) this process's CPU time — with one thread a
    load-robust proxy for before/after comparisons on a busy machine (not a throughput)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    t0 = now()
    fn()
    synchronize(device)
    return now() - t0


def _rates(batch: int, times: list[float]) -> dict[str, Any]:
    return {
        "img_per_s": batch / statistics.median(times),
        "img_per_s_best": batch / min(times),
        "seconds": [round(t, 5) for t in times],
    }


def _loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (how busy the machine was: timings need a quiet one)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def check_bench_memory(s: BenchSettings, device: torch.device) -> str | None:
    """Refuse a setting whose estimated peak does not fit in the free memory (training as ``jitkit train``
    checks it, the forward and sampling modes as ``jitkit sample``); None, or a warning. ``precision auto``
    is checked with its lower (half-precision) estimate, as it is not resolved yet. The variants of a
    comparison are prepared side by side, so each must fit with room to spare; each is checked alone."""
    from jitkit.train.memory_guard import check_sampling_memory, check_training_memory

    cfg, modes, notes = s.model_config(), s.modes(), []
    kw = dict(precision=s.precision, device=device)
    if "train" in modes:
        notes.append(
            check_training_memory(cfg, s.batch_size, grad_checkpoint=s.grad_checkpoint, flags=False, **kw)
        )
    if "forward" in modes:
        notes.append(check_sampling_memory(cfg, s.batch_size, guidance=False, task="forward passes of", **kw))
    if "sample" in modes:
        B, flag = (
            (s.sample_batch_size, "--sample-batch-size") if s.sample_batch_size else (s.batch_size, None)
        )
        sampling_kw = dict(guidance=s.cfg != 1.0 and s.cfg_mode == "batched", batch_flag=flag)
        notes.append(check_sampling_memory(cfg, B, **sampling_kw, **kw))
    return "; ".join(n for n in notes if n) or None


def memory_in_subprocess(s: BenchSettings) -> dict[str, Any]:
    """Peak training-step memory of ``s`` measured in a fresh Python process (robust RSS baseline)."""
    probe = s.replace(mode="train", warmup=2, repeats=1, memory="inprocess")
    cmd = [sys.executable, "-m", "jitkit.bench.runner", json.dumps(probe.to_dict())]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed ({' '.join(cmd[:3])} …):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _interleaved(
    cases: list[tuple[BenchSettings, str, Callable[[], None]]], repeats: int, device: torch.device
) -> tuple[list[list[float]], list[list[float]]]:
    """Time every case (settings, resolved precision, unit) ``repeats`` times, round-robin, so that load
    drift hits all variants alike; each case runs with its own threads and TF32 switch.

    Before each timed call the case's GEMM probe (:func:`jitkit.bench.hardware.gemm_probe`, same precision,
    threads and TF32) measures the matmul throughput of that moment; returns (seconds, probe FLOP/s) per case.
    """
    times: list[list[float]] = [[] for _ in cases]
    peaks: list[list[float]] = [[] for _ in cases]
    probes: dict[tuple[str, int | None, bool], Callable[[], float]] = {}
    for _ in range(repeats):
        for i, (v, precision, fn) in enumerate(cases):
            set_threads(v)
            key = (precision, v.threads, set_tf32(device, v.tf32))
            if key not in probes:
                probes[key] = gemm_probe(device, amp_dtype(precision), n=v.gemm_n)
            peaks[i].append(probes[key]())
            times[i].append(_timed(fn, device, v.clock))
    return times, peaks


def _paired_mfu(batch: int, flops_per_img: float, times: list[float], peaks: list[float]) -> float:
    """Median over the repeats of (achieved FLOP/s ÷ the GEMM probe's FLOP/s just before that repeat)."""
    return statistics.median(batch * flops_per_img / t / p for t, p in zip(times, peaks))


def _store_timings(
    kind: str, results: list[dict[str, Any]], variants: list[BenchSettings], times: list, probe_peaks: list
) -> None:
    """Rates, probe FLOP/s and the paired MFU of the interleaved ``kind`` ("train" | "forward") runs."""
    flops_key = "train_flops_per_img" if kind == "train" else "flops_per_img"
    for r, v, ts, pk in zip(results, variants, times, probe_peaks):
        d = r["details"].setdefault(kind, {})
        d.update(_rates(v.batch_size, ts))
        d["gemm_probe_flops"] = pk
        r[f"mfu_{kind}"] = _paired_mfu(v.batch_size, r[flops_key], ts, pk)
        r[f"{kind}_img_per_s"] = d["img_per_s"]


def _empty_result(fl: dict[str, float], gemm: dict[str, Any]) -> dict[str, Any]:
    none = ("train_img_per_s", "forward_img_per_s", "sample_img_per_s", "peak_mem_mib")
    return {
        **dict.fromkeys(none),
        "flops_per_img": fl["forward"],
        "train_flops_per_img": fl["train"],
        **dict.fromkeys(
            ("mfu", "mfu_train", "mfu_forward", "mfu_train_vs_best_peak", "mfu_forward_vs_best_peak")
        ),
        "gemm_peak_flops": gemm["flops"],
        "peak_mem_kind": None,
        "details": {"gemm": gemm},
    }


def run_bench(
    s: BenchSettings, compare: tuple[str, list[str]] | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure ``s`` and return one flat result, or with ``compare=(key, values)`` measure each variant in
    this process — timed repeats interleaved round-robin across the variants — and return
    ``{"compare": key, "values": [...], "variants": [results], "ratios": {value: {metric: ratio}}}``, the
    ratios being over the first variant. The GEMM peak is measured once per precision and TF32 state; each
    variant is prepared and timed with its own TF32 switch (:func:`jitkit.runtime.set_tf32`, on and off).
    Peak memory is measured per variant over its warm-up steps; on CPU the variants of a comparison are
    measured in fresh processes (see :mod:`jitkit.bench.hardware`)."""
    s.validate()
    device = resolve_device(s.device)
    malloc = retain_freed_memory() if device.type == "cpu" else "default"
    load_start = _loadavg()
    asked = [s] if compare is None else [s.with_value(compare[0], v) for v in compare[1]]
    # precision auto resolved once per variant as training (when timed) or sampling would (measured for the
    # model on a CPU); the
    # variants then run with the resolved value, and the record keeps both
    say = log or (lambda msg: None)
    for v in asked:  # before anything of the size asked for is allocated (the precision probe is)
        note = check_bench_memory(v, device)
        if note:
            say(f"memory: {note}")
    choices = []
    for v in asked:
        set_threads(v)
        images, training = v.batch_size, "train" in v.modes()
        choices.append(precision_for_model(v.precision, device, v.model_config(), images, train=training))
    precisions = [c[0] for c in choices]
    variants = [v.replace(precision=p) for v, p in zip(asked, precisions)]
    peaks: dict[tuple[str, bool], dict] = {}
    tf32s = []  # whether TF32 is on for each variant (it is switched per variant, both ways)
    for v, precision in zip(variants, precisions):
        tf32s.append(set_tf32(device, v.tf32))
        # both float32 and bf16 peaks are recorded (MFU is against the variant's own precision)
        for pr in dict.fromkeys([precision, "fp32", "bf16"]):
            if (pr, tf32s[-1]) in peaks or (pr == "bf16" and device.type == "mps"):
                continue
            set_threads(v)
            say(f"measuring the {pr} GEMM peak on {device}" + (" (TF32)" if tf32s[-1] else ""))
            peaks[(pr, tf32s[-1])] = gemm_peak(
                device, amp_dtype(pr), n=v.gemm_n, seconds=v.gemm_seconds, clock=v.clock
            )
    results = [
        _empty_result(flops_per_image(v.model_config()), peaks[(p, tf)])
        for v, p, tf in zip(variants, precisions, tf32s)
    ]
    for r, tf in zip(results, tf32s):
        r["gemm_peaks_flops"] = {pr: peaks[(pr, t)]["flops"] for pr, t in peaks if t == tf}
    modes = s.modes()
    labels = ["" if compare is None else f"{compare[0]}={val}" for val in (compare[1] if compare else [""])]

    if "train" in modes:
        cases = []
        subprocess_mem = []
        for i, v in enumerate(variants):
            # CPU RSS is only trustworthy in a fresh process: every variant of a comparison gets one
            in_proc = v.memory == "inprocess" or (
                v.memory == "auto" and (device.type != "cpu" or len(variants) == 1)
            )
            say(f"train: preparing {labels[i]} (warm-up {v.warmup})".replace("  ", " "))
            set_tf32(device, v.tf32)
            fn, info = prepare_train(v, device, PeakMemory(device) if in_proc else None)
            results[i]["peak_mem_mib"] = info.pop("peak_mem_mib", None)
            results[i]["peak_mem_kind"] = info.pop("peak_mem_kind", None)
            results[i]["details"]["train"] = info
            subprocess_mem.append(not in_proc and v.memory != "off")
            cases.append((v, precisions[i], fn))
        say(f"train: {s.repeats} timed steps per variant")
        _store_timings("train", results, variants, *_interleaved(cases, s.repeats, device))
        del cases
        for i, v in enumerate(variants):
            if subprocess_mem[i]:
                say(f"train: peak memory of {labels[i]} in a fresh process")
                m = memory_in_subprocess(v)
                results[i]["peak_mem_mib"] = m["peak_mem_mib"]
                results[i]["peak_mem_kind"] = m["peak_mem_kind"] + " (fresh process)"
    if "forward" in modes:
        cases = []
        for i, v in enumerate(variants):
            say(f"forward: preparing {labels[i]}".rstrip())
            set_tf32(device, v.tf32)
            cases.append((v, precisions[i], prepare_forward(v, device)))
        say(f"forward: {s.repeats} timed passes per variant")
        _store_timings("forward", results, variants, *_interleaved(cases, s.repeats, device))
        del cases
    if "sample" in modes:
        for i, v in enumerate(variants):
            say(f"sample: {labels[i]} {v.sampler} {v.sample_steps} steps, cfg {v.cfg}".replace("  ", " "))
            set_tf32(device, v.tf32)
            fn, info = prepare_sample(v, device)
            ts = [_timed(fn, device, v.clock) for _ in range(v.sample_repeats)]
            results[i]["details"]["sample"] = {**info, **_rates(info["batch_size"], ts)}
            results[i]["sample_img_per_s"] = results[i]["details"]["sample"]["img_per_s"]
    for v, precision, tf32, r, choice in zip(asked, precisions, tf32s, results, choices):
        # the paired MFU (above) is the headline; against the best GEMM call of the up-front peak measurement
        # (a lower bound when the machine was faster then than during the timed repeats) it is kept beside
        peak = r["gemm_peak_flops"]
        if r["train_img_per_s"] is not None:
            r["mfu_train_vs_best_peak"] = r["train_img_per_s"] * r["train_flops_per_img"] / peak
        if r["forward_img_per_s"] is not None:
            r["mfu_forward_vs_best_peak"] = r["forward_img_per_s"] * r["flops_per_img"] / peak
        r["mfu"] = r["mfu_train"] if r["mfu_train"] is not None else r["mfu_forward"]
        r["settings"] = settings_record(v, device, precision, tf32)
        r["settings"]["precision_choice"] = choice[1]
        r["settings"]["malloc"] = malloc
        r["settings"]["loadavg_start"] = load_start
        r["settings"]["loadavg_end"] = _loadavg()
    if compare is None:
        return results[0]
    keys = ("train_img_per_s", "forward_img_per_s", "sample_img_per_s", "peak_mem_mib", "mfu")
    ratios = {
        val: {k: (r[k] / results[0][k] if r[k] is not None and results[0][k] else None) for k in keys}
        for val, r in zip(compare[1], results)
    }
    return {"compare": compare[0], "values": compare[1], "variants": results, "ratios": ratios}


def run_config(s: BenchSettings) -> dict[str, Any]:
    """Measure one configuration (the flat result of :func:`run_bench` without ``compare``)."""
    return run_bench(s)


def _worker(argv: list[str]) -> int:
    s = BenchSettings.from_dict(json.loads(argv[0]))
    device = resolve_device(s.device)
    if device.type == "cpu":
        retain_freed_memory()  # as in the parent's timed runs
    set_threads(s)
    set_tf32(device, s.tf32)
    _, info = prepare_train(s, device, PeakMemory(device))
    print(json.dumps({"peak_mem_mib": info["peak_mem_mib"], "peak_mem_kind": info["peak_mem_kind"]}))
    return 0


if __name__ == "__main__":  # memory probe: python -m jitkit.bench.runner '<settings json>'
    sys.exit(_worker(sys.argv[1:]))
