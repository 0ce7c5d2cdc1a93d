"""The three measurements of ``jitkit bench``: each prepares a callable that runs one timed unit (a training
step, a forward pass, a sampling run) of a :class:`jitkit.bench.settings.BenchSettings` configuration, with the
model built as the library's commands build it (:func:`build_denoiser`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from jitkit.bench.hardware import PeakMemory
from jitkit.bench.settings import ADAMW, EMAS, SAMPLE_INTERVAL, BenchSettings
from jitkit.bench.variants import LerpEMA, LoopEMA, sample_separate_cfg
from jitkit.config import DiffusionConfig, SamplerConfig
from jitkit.diffusion.generate import cast_for_inference, sample_denoiser
from jitkit.models.linear import use_cpu_linear
from jitkit.runtime import autocast, resolve_precision, synchronize
from jitkit.train.ema import EMA
from jitkit.train.optim import make_optimizer

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
        net.compile_blocks(freeze=inference, whole=s.compile_scope == "model")
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


def set_threads(s: BenchSettings) -> None:
    if s.threads is not None and torch.get_num_threads() != s.threads:
        torch.set_num_threads(s.threads)


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
    set_threads(s)
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

    set_threads(s)
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

    set_threads(s)
    if s.warmup:  # one short run warms the kernels up (a full run would double the cost)
        short = SamplerConfig(method=s.sampler, steps=2, cfg=s.cfg, interval=SAMPLE_INTERVAL)
        sample_denoiser(den, z0, y, short, precision=precision)
    evals = network_evaluations(scfg)
    return run, {"batch_size": B, "network_evaluations": evals, "cfg_mode": s.cfg_mode}
