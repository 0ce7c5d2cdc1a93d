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
from dataclasses import dataclass
from typing import Any

import torch

from jitkit.bench.flops import flops_per_image
from jitkit.bench.hardware import (
    PeakMemory,
    cpu_name,
    device_name,
    gemm_peak,
    gemm_probe,
)
from jitkit.bench.variants import LerpEMA, LoopEMA, sample_separate_cfg
from jitkit.config import (
    SAMPLERS,
    ConfigBase,
    ConfigError,
    DiffusionConfig,
    ModelConfig,
    SamplerConfig,
    model_config,
)
from jitkit.diffusion.generate import cast_for_inference, sample_denoiser
from jitkit.models.linear import BACKENDS, cpu_linear_backend, use_cpu_linear
from jitkit.models.registry import precision_for_model
from jitkit.runtime import (
    PRECISIONS,
    amp_dtype,
    autocast,
    resolve_device,
    resolve_precision,
    retain_freed_memory,
    set_tf32,
    synchronize,
)
from jitkit.train.ema import EMA
from jitkit.train.optim import OPTIMIZER_IMPLS, make_optimizer

MODES = ("train", "forward", "sample", "all")
OPTIMS = OPTIMIZER_IMPLS  # fused | foreach | loop | fused-ema (jitkit.train.optim)
EMAS = ("foreach", "lerp", "loop", "none")
MEMORY = ("auto", "inprocess", "subprocess", "off")
CFG_MODES = ("batched", "separate")
CLOCKS = ("wall", "cpu")
CPU_LINEAR = BACKENDS  # auto | onednn | aten (jitkit.models.linear)
SAMPLE_INTERVAL = (0.1, 1.0)
# the timed AdamW: the reference's betas, no weight decay (the learning rate does not change the cost)
ADAMW = {"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.0}


@dataclass(frozen=True)
class BenchSettings(ConfigBase):
    """One configuration to measure. ``img_size``/``num_classes`` None = the model's registered default;
    ``precision`` auto | fp32 | bf16 | fp16 (:func:`jitkit.runtime.resolve_precision`)."""

    model: str = "JiT-B/16"
    img_size: int | None = None
    batch_size: int = 2
    device: str = "auto"
    precision: str = "fp32"
    mode: str = "all"
    sample_steps: int = 50
    sampler: str = "heun"  # the solver of the sample mode (jitkit.config.SAMPLERS)
    sample_batch_size: int | None = None
    cfg: float = 2.9
    threads: int | None = None
    attention: str = "sdpa"
    grad_checkpoint: bool = False
    compile: bool = False
    channels_last: bool = False
    optim: str = "fused"
    ema: str = "foreach"
    item_sync: bool = False
    cfg_mode: str = "batched"
    tf32: bool = True
    cpu_linear: str = "auto"
    num_classes: int | None = None
    warmup: int = 2
    repeats: int = 5
    sample_repeats: int = 1
    gemm_seconds: float = 2.0
    gemm_n: int | None = None
    memory: str = "auto"
    clock: str = "wall"
    seed: int = 0

    def validate(self) -> None:
        if not self.modes() or any(m not in MODES[:3] for m in self.modes()):
            raise ConfigError(
                f"mode must be one of {MODES} or a comma list like train,forward; found {self.mode!r}"
            )
        choices = {
            "precision": PRECISIONS,
            "optim": OPTIMS,
            "ema": EMAS,
            "cfg_mode": CFG_MODES,
            "clock": CLOCKS,
            "cpu_linear": CPU_LINEAR,
            "memory": MEMORY,
            "sampler": SAMPLERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, found {getattr(self, name)!r}")
        if self.cfg_mode == "separate" and self.sampler != "heun":
            raise ConfigError(
                f"cfg_mode 'separate' (the before-variant) samples with heun only, found sampler {self.sampler!r}"
            )
        self.check_at_least(1, "batch_size", "sample_steps", "repeats", "sample_repeats", "threads")
        self.check_at_least(0, "warmup")
        self.model_config().validate()

    def modes(self) -> tuple[str, ...]:
        if self.mode == "all":
            return MODES[:3]
        return tuple(m.strip() for m in self.mode.split(",") if m.strip())

    def model_config(self) -> ModelConfig:
        kw: dict[str, Any] = {"attention": self.attention, "grad_checkpoint": self.grad_checkpoint}
        if self.img_size is not None:
            kw["img_size"] = self.img_size
        if self.num_classes is not None:
            kw["num_classes"] = self.num_classes
        return model_config(self.model, **kw)

    def with_value(self, key: str, text: str) -> BenchSettings:
        """A copy with one setting given as text (a compared value: ``"1"``, ``"none"``, ``"8"``), coerced to
        the setting's type by :meth:`ConfigBase.replace`; a ``ConfigError`` names the setting otherwise."""
        return self.replace(**{key: text})


QUICK = {
    "model": "JiT-T/2",
    "batch_size": 4,
    "sample_steps": 3,
    "warmup": 1,
    "repeats": 3,
    "gemm_seconds": 0.3,
    "gemm_n": 512,
}


# --- building pieces -----------------------------------------------------------------------------------------


def build_denoiser(s: BenchSettings, device: torch.device, inference: bool = False) -> torch.nn.Module:
    """The benchmark's Denoiser; ``inference``: compiled (with ``s.compile``) as sampling compiles it, frozen."""
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.registry import build_model

    torch.manual_seed(s.seed)
    mc = s.model_config()
    net = use_cpu_linear(build_model(mc, device=device), s.cpu_linear)
    if s.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if s.compile:
        net.compile_blocks(freeze=inference)
    return Denoiser(net, DiffusionConfig(), mc.num_classes)


def _inference_denoiser(s: BenchSettings, device: torch.device, precision: str) -> torch.nn.Module:
    """The Denoiser on the inference path of sampling: eval mode, frozen when compiled, half-precision weights
    when that precision runs (:func:`cast_for_inference`)."""
    return cast_for_inference(build_denoiser(s, device, inference=True).eval(), precision)


def fuses_ema(s: BenchSettings) -> bool:
    """Whether the timed step uses :class:`jitkit.train.optim.AdamWEMA`: asked for (``optim="fused-ema"``) or,
    as in ``jitkit train --compile``, implied by ``compile`` with the default optimiser and EMA."""
    if s.optim == "fused-ema":
        return True
    return s.compile and s.optim == "fused" and s.ema == "foreach"


def make_ema(model: torch.nn.Module, kind: str) -> EMA | LoopEMA | None:
    """``foreach``: the library's :class:`jitkit.train.ema.EMA`; ``lerp`` / ``loop``: the "before" variants
    of :mod:`jitkit.bench.variants`; ``none``: no EMA."""
    if kind == "none":
        return None
    if kind == "loop":
        return LoopEMA(model)
    if kind == "lerp":
        return LerpEMA(model)
    if kind == "foreach":
        return EMA(model)
    raise ValueError(f"ema must be one of {EMAS}, found {kind!r}")


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


def _set_threads(s: BenchSettings) -> None:
    if s.threads is not None and torch.get_num_threads() != s.threads:
        torch.set_num_threads(s.threads)


# --- the three measurements: each prepares a callable that runs one timed unit ------------------------------


def prepare_train(
    s: BenchSettings, device: torch.device, mem: PeakMemory | None = None
) -> tuple[Callable[[], None], dict[str, Any]]:
    """One training step on an in-memory batch: loss (autocast unless fp32) → backward → AdamW → EMAs.

    With ``mem`` the peak memory is measured from just before the optimizer and EMA are created (the model
    and the batch are the baseline) over ``max(warmup, 2)`` steps run here (the second step is the first with
    the AdamW moments allocated during its forward and backward).
    """
    precision = resolve_precision(s.precision, device)
    den = build_denoiser(s, device)
    den.train()
    mc = s.model_config()
    g = torch.Generator(device="cpu").manual_seed(s.seed)
    x = (torch.rand(s.batch_size, mc.in_channels, mc.img_size, mc.img_size, generator=g) * 2 - 1).to(device)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, mc.num_classes, (s.batch_size,), generator=g).to(device)
    if mem is not None:
        mem.start()
    fused_ema = None
    if fuses_ema(s):  # the engine's compiled AdamW + EMA step: the optimiser owns and updates the EMAs
        from jitkit.models.registry import compiler_available

        ok, why = compiler_available(device)
        if not ok:
            raise ValueError(f"the compiled AdamW + EMA step needs torch.compile on {device.type}: {why}")
        fused_ema = EMA(den)
    impl = "fused-ema" if fused_ema is not None else s.optim
    opt = make_optimizer(den, impl=impl, ema=fused_ema, **ADAMW)
    ema = None if fused_ema is not None else make_ema(den, s.ema)

    def step() -> None:
        with autocast(device, precision):
            loss = den.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(den)
        if s.item_sync:  # the reference reads loss.item() every step (a host sync on GPUs)
            loss.item()
        if mem is not None:
            mem.sample()

    info: dict[str, Any] = {
        "optimizer": {k: opt.defaults.get(k) for k in ("fused", "foreach")} | {"class": type(opt).__name__},
        "ema": "in the optimiser step (AdamWEMA)"
        if fused_ema is not None
        else (None if ema is None else f"{type(ema).__module__}.{type(ema).__name__}"),
    }
    _set_threads(s)
    # memory needs two steps: the optimizer state only exists from the first step's end on
    for _ in range(max(s.warmup, 2 if mem is not None else 0)):
        step()
    synchronize(device)
    if mem is not None:
        info["peak_mem_mib"] = mem.stop()
        info["peak_mem_kind"] = mem.kind
        mem = None  # no more sampling after the measurement
    return step, info


def prepare_forward(s: BenchSettings, device: torch.device) -> Callable[[], None]:
    """The network alone, eval mode, no grad, on a batch of noisy images, on the inference path of sampling
    (weights kept in bf16/fp16 when that precision runs: :func:`cast_for_inference`)."""
    precision = resolve_precision(s.precision, device)
    den = _inference_denoiser(s, device, precision)
    mc = s.model_config()
    g = torch.Generator(device="cpu").manual_seed(s.seed + 1)
    z = torch.randn(s.batch_size, mc.in_channels, mc.img_size, mc.img_size, generator=g).to(device)
    if s.channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    t = torch.rand(s.batch_size, generator=g).to(device)
    y = torch.randint(0, mc.num_classes, (s.batch_size,), generator=g).to(device)

    def fwd() -> None:
        with torch.no_grad(), autocast(device, precision):
            den.net(z, t, y)

    _set_threads(s)
    for _ in range(s.warmup):
        fwd()
    return fwd


def prepare_sample(s: BenchSettings, device: torch.device) -> tuple[Callable[[], None], dict[str, Any]]:
    """A full run of solver ``sampler`` (``sample_steps``, CFG ``cfg`` on [0.1, 1]) of the library sampler, or with
    ``cfg_mode="separate"`` of :func:`jitkit.bench.variants.sample_separate_cfg`."""
    from jitkit.diffusion.sampling import initial_noise, network_evaluations

    precision = resolve_precision(s.precision, device)
    den = _inference_denoiser(s, device, precision)
    mc = s.model_config()
    B = s.sample_batch_size or s.batch_size
    scfg = SamplerConfig(method=s.sampler, steps=s.sample_steps, cfg=s.cfg, interval=SAMPLE_INTERVAL)
    g = torch.Generator(device="cpu").manual_seed(s.seed + 2)
    y = torch.randint(0, mc.num_classes, (B,), generator=g).to(device)
    z0 = initial_noise(B, (mc.in_channels, mc.img_size, mc.img_size), 1.0, seed=s.seed, device=device)
    sampler = sample_denoiser if s.cfg_mode == "batched" else sample_separate_cfg

    def run() -> None:
        sampler(den, z0, y, scfg, precision=precision)

    _set_threads(s)
    if s.warmup:  # one short run warms the kernels up (a full run would double the cost)
        short = SamplerConfig(method=s.sampler, steps=2, cfg=s.cfg, interval=SAMPLE_INTERVAL)
        sample_denoiser(den, z0, y, short, precision=precision)
    evals = network_evaluations(scfg)
    return run, {"batch_size": B, "network_evaluations": evals, "cfg_mode": s.cfg_mode}


# --- configurations ------------------------------------------------------------------------------------------


def settings_record(s: BenchSettings, device: torch.device, precision: str, tf32: bool) -> dict[str, Any]:
    """Every setting of ``s`` with the defaults resolved (``precision`` and ``tf32`` as asked for and, in
    ``precision_resolved`` and ``tf32_resolved``, as run), and the machine: torch, Python, CPU and device
    names."""
    mc = s.model_config()
    rec = s.to_dict()
    rec.update(
        {
            "img_size": mc.img_size,
            "num_classes": mc.num_classes,
            "device": str(device),
            "precision_resolved": precision,
            "tf32_resolved": tf32,  # TF32 was on for float32 matmuls (CUDA with compute capability >= 8.0)
            "threads": s.threads if s.threads is not None else torch.get_num_threads(),
            "torch": torch.__version__,
            # the float32 CPU linear backend the layers ran on (auto resolved); "-" off the CPU
            "cpu_linear_backend": (
                (cpu_linear_backend() if s.cpu_linear == "auto" else s.cpu_linear)
                if device.type == "cpu"
                else "-"
            ),
            "cpu": cpu_name(),
            "device_name": device_name(device),
            "python": sys.version.split()[0],
            # how --compile compiles: training per block; forward and sampling as jitkit sample does (one frozen
            # inference graph, JiT.compile_blocks(freeze=True))
            "compiled_as": (
                {m: "blocks" if m == "train" else "frozen graph" for m in s.modes()} if s.compile else None
            ),
        }
    )
    return rec


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
            _set_threads(v)
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
    choices = []
    for v in asked:
        _set_threads(v)
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
            _set_threads(v)
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
    _set_threads(s)
    set_tf32(device, s.tf32)
    _, info = prepare_train(s, device, PeakMemory(device))
    print(json.dumps({"peak_mem_mib": info["peak_mem_mib"], "peak_mem_kind": info["peak_mem_kind"]}))
    return 0


if __name__ == "__main__":  # memory probe: python -m jitkit.bench.runner '<settings json>'
    sys.exit(_worker(sys.argv[1:]))
