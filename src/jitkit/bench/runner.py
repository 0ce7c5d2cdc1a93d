"""Steady-state throughput, peak memory, FLOPs and MFU of one JiT configuration.

A configuration (:class:`BenchSettings`) is measured by :func:`run_config`:

* **train**: one timed step = ``Denoiser.loss`` (label drop, t ~ logit-normal, noise, z_t, v-loss) +
  backward + AdamW (fused / foreach / per-tensor loop) + the two EMAs, on a batch that lives in memory, so
  the model (not data loading) is what is timed. No ``.item()`` inside the step; the device is synchronised
  once per timed step.
* **forward**: the network alone under ``torch.no_grad`` (eval mode) on a batch of noisy images.
* **sample**: a full Heun sampler run with ``sample_steps`` steps and CFG ``cfg`` on the interval
  [0.1, 1] (batched conditional/unconditional passes; unconditional pass skipped where the scale is 1).

Warm-up iterations are excluded; ``repeats`` timed iterations give a median (reported as the img/s) and
a best. FLOPs come from :mod:`jitkit.bench.flops`; MFU = achieved FLOP/s ÷ the dense GEMM peak measured
by :func:`jitkit.bench.hardware.gemm_peak` in the same dtype on the same device.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from jitkit.bench.flops import flops_per_image
from jitkit.bench.hardware import (
    DTYPES,
    PeakMemory,
    configure_backends,
    cpu_name,
    device_name,
    gemm_peak,
    resolve_device,
    synchronize,
)
from jitkit.config import DiffusionConfig, ModelConfig, SamplerConfig, model_config

MODES = ("train", "forward", "sample", "all")
OPTIMS = ("fused", "foreach", "loop")
EMAS = ("foreach", "loop", "none")
MEMORY = ("auto", "inprocess", "subprocess", "off")
SAMPLE_INTERVAL = (0.1, 1.0)


@dataclass(frozen=True)
class BenchSettings:
    """One configuration to measure. ``img_size``/``num_classes`` None = the model's registered default."""

    model: str = "JiT-B/16"
    img_size: int | None = None
    batch_size: int = 2
    device: str = "cpu"
    dtype: str = "fp32"
    mode: str = "all"
    sample_steps: int = 50
    sample_batch_size: int | None = None
    cfg: float = 2.9
    threads: int | None = None
    attention: str = "sdpa"
    grad_checkpoint: bool = False
    compile: bool = False
    channels_last: bool = False
    optim: str = "fused"
    ema: str = "foreach"
    tf32: bool = True
    num_classes: int | None = None
    warmup: int = 2
    repeats: int = 5
    sample_repeats: int = 1
    gemm_seconds: float = 2.0
    gemm_n: int | None = None
    memory: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, found {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, found {self.dtype!r}")
        if self.optim not in OPTIMS:
            raise ValueError(f"optim must be one of {OPTIMS}, found {self.optim!r}")
        if self.ema not in EMAS:
            raise ValueError(f"ema must be one of {EMAS}, found {self.ema!r}")
        if self.memory not in MEMORY:
            raise ValueError(f"memory must be one of {MEMORY}, found {self.memory!r}")
        for name in ("batch_size", "sample_steps", "repeats", "sample_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, found {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, found {self.threads}")
        self.model_config().validate()

    def model_config(self) -> ModelConfig:
        kw: dict[str, Any] = {"attention": self.attention, "grad_checkpoint": self.grad_checkpoint}
        if self.img_size is not None:
            kw["img_size"] = self.img_size
        if self.num_classes is not None:
            kw["num_classes"] = self.num_classes
        return model_config(self.model, **kw)

    def with_value(self, key: str, value: str) -> BenchSettings:
        """A copy with one field set from a string (``--compare key=a,b``); booleans accept 0/1."""
        types = {f.name: f.type for f in fields(self)}
        if key not in types:
            raise ValueError(f"unknown setting {key!r} to compare; choose from {', '.join(sorted(types))}")
        t = str(types[key])
        try:
            if t.startswith("bool"):
                if value.lower() not in ("0", "1", "true", "false", "on", "off"):
                    raise ValueError
                v: Any = value.lower() in ("1", "true", "on")
            elif t.startswith("int"):
                v = None if value.lower() == "none" else int(value)
            elif t.startswith("float"):
                v = float(value)
            else:
                v = value
        except ValueError:
            raise ValueError(f"setting {key} expects a value of type {t}, found {value!r}") from None
        return replace(self, **{key: v})


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


def autocast_ctx(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def build_denoiser(s: BenchSettings, device: torch.device) -> torch.nn.Module:
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.registry import build_model

    torch.manual_seed(s.seed)
    mc = s.model_config()
    net = build_model(mc, device=device)
    if s.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if s.compile:
        for blk in net.blocks:
            blk.compile()
        net.final_layer.compile()
    return Denoiser(net, DiffusionConfig(), mc.num_classes)


def make_optimizer(
    params: list[torch.nn.Parameter], kind: str, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW(β = 0.9, 0.95, wd 0) as in the reference: ``fused`` (one kernel per step where torch has it for
    the device, else foreach), ``foreach`` (multi-tensor) or ``loop`` (per-tensor, torch's CPU default)."""
    kw = {"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.0}
    if kind == "fused":
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, ValueError):  # no fused kernel for this device/dtype
            return torch.optim.AdamW(params, foreach=True, **kw)
    return torch.optim.AdamW(params, foreach=(kind == "foreach"), **kw)


class _LoopEMA:
    """The reference's EMA: per-tensor ema ← d·ema + (1 − d)·p, two decays (for before/after timings)."""

    def __init__(self, model: torch.nn.Module, decays: tuple[float, ...] = (0.9999, 0.9996)) -> None:
        self.decays = decays
        self.shadows = [[p.detach().clone() for p in model.parameters()] for _ in decays]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = list(model.parameters())
        for d, shadow in zip(self.decays, self.shadows):
            for e, p in zip(shadow, params):
                e.mul_(d).add_(p, alpha=1 - d)


class _ForeachEMA(_LoopEMA):
    """ema ← ema + (1 − d)·(p − ema) with one ``torch._foreach_lerp_`` per decay (no temporaries)."""

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        for d, shadow in zip(self.decays, self.shadows):
            torch._foreach_lerp_(shadow, params, 1 - d)


def make_ema(model: torch.nn.Module, kind: str) -> Any:
    """``foreach``: the training engine's :class:`jitkit.train.ema.EMA` when it is installed (it uses
    torch._foreach ops), else an equivalent local one; ``loop``: the reference's per-tensor update."""
    if kind == "none":
        return None
    if kind == "loop":
        return _LoopEMA(model)
    try:
        from jitkit.train.ema import EMA

        return EMA(model)
    except Exception:  # the train package not present, or another signature
        return _ForeachEMA(model)


def _time(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def _rates(batch: int, times: list[float]) -> dict[str, Any]:
    return {
        "img_per_s": batch / statistics.median(times),
        "img_per_s_best": batch / min(times),
        "seconds": [round(t, 5) for t in times],
    }


# --- the three measurements ---------------------------------------------------------------------------------


def bench_train(s: BenchSettings, device: torch.device, measure_memory: bool = True) -> dict[str, Any]:
    den = build_denoiser(s, device)
    den.train()
    mc = s.model_config()
    g = torch.Generator(device="cpu").manual_seed(s.seed)
    x = (torch.rand(s.batch_size, mc.in_channels, mc.img_size, mc.img_size, generator=g) * 2 - 1).to(device)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, mc.num_classes, (s.batch_size,), generator=g).to(device)
    mem = PeakMemory(device)
    if measure_memory:
        mem.start()
    opt = make_optimizer([p for p in den.parameters() if p.requires_grad], s.optim, device)
    ema = make_ema(den, s.ema)

    def step() -> None:
        with autocast_ctx(device, s.dtype):
            loss = den.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(den)
        mem.sample()

    times = _time(step, s.warmup, s.repeats, device)
    out = _rates(s.batch_size, times)
    if measure_memory:
        out["peak_mem_mib"] = mem.stop()
        out["peak_mem_kind"] = mem.kind
    out["optimizer"] = {k: v for k, v in opt.defaults.items() if k in ("fused", "foreach")}
    out["ema"] = type(ema).__module__ + "." + type(ema).__name__ if ema is not None else None
    return out


def bench_forward(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    den = build_denoiser(s, device).eval()
    mc = s.model_config()
    g = torch.Generator(device="cpu").manual_seed(s.seed + 1)
    z = torch.randn(s.batch_size, mc.in_channels, mc.img_size, mc.img_size, generator=g).to(device)
    if s.channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    t = torch.rand(s.batch_size, generator=g).to(device)
    y = torch.randint(0, mc.num_classes, (s.batch_size,), generator=g).to(device)

    def fwd() -> None:
        with torch.no_grad(), autocast_ctx(device, s.dtype):
            den.net(z, t, y)

    return _rates(s.batch_size, _time(fwd, s.warmup, s.repeats, device))


def bench_sample(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    from jitkit.diffusion.sampling import initial_noise, network_evaluations, sample

    den = build_denoiser(s, device).eval()
    mc = s.model_config()
    B = s.sample_batch_size or s.batch_size
    scfg = SamplerConfig(method="heun", steps=s.sample_steps, cfg=s.cfg, interval=SAMPLE_INTERVAL)
    g = torch.Generator(device="cpu").manual_seed(s.seed + 2)
    y = torch.randint(0, mc.num_classes, (B,), generator=g).to(device)
    z0 = initial_noise(B, (mc.in_channels, mc.img_size, mc.img_size), 1.0, seed=s.seed, device=device)

    def velocity(z: torch.Tensor, t: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        with autocast_ctx(device, s.dtype):
            return den.predict(z, t, yy, kind="v")

    def run() -> None:
        sample(velocity, z0, y, scfg, mc.num_classes, t_eps=den.cfg.t_eps)

    warm = min(s.warmup, 1)
    out = _rates(B, _time(run, warm, s.sample_repeats, device))
    out["batch_size"] = B
    out["network_evaluations"] = network_evaluations(scfg)
    return out


# --- one configuration ---------------------------------------------------------------------------------------


def settings_record(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    mc = s.model_config()
    rec = asdict(s)
    rec.update(
        {
            "img_size": mc.img_size,
            "num_classes": mc.num_classes,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu": cpu_name(),
            "device_name": device_name(device),
            "python": sys.version.split()[0],
        }
    )
    return rec


def run_config(
    s: BenchSettings, *, memory_in_process: bool = True, peak: dict | None = None
) -> dict[str, Any]:
    """Measure one configuration; returns the flat result dict (fields None where a mode was not run)."""
    s.validate()
    device = resolve_device(s.device)
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    configure_backends(device, s.tf32)
    modes = ("train", "forward", "sample") if s.mode == "all" else (s.mode,)
    mc = s.model_config()
    fl = flops_per_image(mc)
    res: dict[str, Any] = {
        "train_img_per_s": None,
        "forward_img_per_s": None,
        "sample_img_per_s": None,
        "peak_mem_mib": None,
        "flops_per_img": fl["forward"],
        "train_flops_per_img": fl["train"],
        "mfu": None,
        "mfu_train": None,
        "mfu_forward": None,
        "gemm_peak_flops": None,
        "details": {},
    }
    if "train" in modes:
        tr = bench_train(s, device, measure_memory=memory_in_process and s.memory != "off")
        res["train_img_per_s"] = tr["img_per_s"]
        res["peak_mem_mib"] = tr.pop("peak_mem_mib", None)
        res["peak_mem_kind"] = tr.pop("peak_mem_kind", None)
        res["details"]["train"] = tr
    if "forward" in modes:
        fw = bench_forward(s, device)
        res["forward_img_per_s"] = fw["img_per_s"]
        res["details"]["forward"] = fw
    if "sample" in modes:
        sm = bench_sample(s, device)
        res["sample_img_per_s"] = sm["img_per_s"]
        res["details"]["sample"] = sm
    if peak is None:
        peak = gemm_peak(device, DTYPES[s.dtype], n=s.gemm_n, seconds=s.gemm_seconds)
    res["gemm_peak_flops"] = peak["flops"]
    res["details"]["gemm"] = peak
    if res["train_img_per_s"] is not None:
        res["mfu_train"] = res["train_img_per_s"] * fl["train"] / peak["flops"]
    if res["forward_img_per_s"] is not None:
        res["mfu_forward"] = res["forward_img_per_s"] * fl["forward"] / peak["flops"]
    res["mfu"] = res["mfu_train"] if res["mfu_train"] is not None else res["mfu_forward"]
    res["settings"] = settings_record(s, device)
    return res


def memory_in_subprocess(s: BenchSettings) -> dict[str, Any]:
    """Peak training-step memory of ``s`` measured in a fresh Python process (robust RSS baseline)."""
    probe = replace(s, mode="train", warmup=1, repeats=1, memory="inprocess")
    cmd = [sys.executable, "-m", "jitkit.bench.runner", json.dumps(asdict(probe))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed ({' '.join(cmd[:3])} …):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_compare(spec: str) -> tuple[str, list[str]]:
    """``"attention=sdpa,math-fp32"`` → ("attention", ["sdpa", "math-fp32"])."""
    if "=" not in spec:
        raise ValueError(f"--compare expects KEY=a,b (e.g. attention=sdpa,math-fp32), found {spec!r}")
    key, vals = spec.split("=", 1)
    values = [v for v in vals.split(",") if v]
    if len(values) < 2:
        raise ValueError(f"--compare {key} needs at least two comma-separated values, found {vals!r}")
    return key.strip().replace("-", "_"), values


def run_bench(
    s: BenchSettings, compare: tuple[str, list[str]] | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure ``s`` (one flat result) or, with ``compare=(key, values)``, each variant in this process one
    after the other, returning ``{"compare": key, "variants": [...], "ratios": {...}}`` where the ratios
    are each variant's metric over the first variant's. The GEMM peak is measured once per dtype. On CPU
    the peak memory of every variant after the first is measured in a fresh process (see hardware.py)."""
    s.validate()
    variants = [s] if compare is None else [s.with_value(compare[0], v) for v in compare[1]]
    for v in variants:
        v.validate()
    device = resolve_device(s.device)
    peaks: dict[str, dict] = {}
    results = []
    for i, v in enumerate(variants):
        if log is not None and compare is not None:
            log(f"[{i + 1}/{len(variants)}] {compare[0]}={compare[1][i]}")
        runs_train = v.mode in ("train", "all") and v.memory != "off"
        sub = runs_train and (
            v.memory == "subprocess" or (v.memory == "auto" and device.type == "cpu" and i > 0)
        )
        if v.dtype not in peaks:
            if v.threads is not None:
                torch.set_num_threads(v.threads)
            peaks[v.dtype] = gemm_peak(device, DTYPES[v.dtype], n=v.gemm_n, seconds=v.gemm_seconds)
        r = run_config(v, memory_in_process=not sub, peak=peaks[v.dtype])
        if sub:
            m = memory_in_subprocess(v)
            r["peak_mem_mib"], r["peak_mem_kind"] = m["peak_mem_mib"], m["peak_mem_kind"] + " (fresh process)"
        results.append(r)
    if compare is None:
        return results[0]
    keys = ("train_img_per_s", "forward_img_per_s", "sample_img_per_s", "peak_mem_mib", "mfu")
    ratios = {}
    for val, r in zip(compare[1], results):
        ratios[val] = {
            k: (r[k] / results[0][k] if r[k] is not None and results[0][k] else None) for k in keys
        }
    return {"compare": compare[0], "values": compare[1], "variants": results, "ratios": ratios}


def _worker(argv: list[str]) -> int:
    s = BenchSettings(**json.loads(argv[0]))
    device = resolve_device(s.device)
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    configure_backends(device, s.tf32)
    tr = bench_train(s, device, measure_memory=True)
    print(json.dumps({"peak_mem_mib": tr["peak_mem_mib"], "peak_mem_kind": tr["peak_mem_kind"]}))
    return 0


if __name__ == "__main__":  # memory probe: python -m jitkit.bench.runner '<settings json>'
    sys.exit(_worker(sys.argv[1:]))
