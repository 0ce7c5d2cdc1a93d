"""The hardware planner behind ``jitkit plan`` and ``jitkit train --batch-size auto``.

From a model config, the devices (kind, count, memory) and the host (CPUs, memory) and a target effective
batch it chooses micro-batch, gradient accumulation, DataLoader workers and precision, and estimates the
peak device memory per process and the host memory.

Device memory per process (bytes), with P parameters (P_t trainable) and micro-batch m:

    weights 4P + gradients 4P_t + AdamW moments 8P_t + two EMAs 8P          (fp32 master state)
      (FSDP divides all four by the world size)
    activations  m · a          a = bytes autograd saves for backward per image, measured by tracing one
                                forward on the meta device (no memory used) with saved-tensor hooks;
                                with activation checkpointing: block inputs + the largest block's a
    workspace    the largest block's activations m · a_block (gradients in flight during backward)
    bf16/fp16 autocast: activations × 0.6 (matmul inputs are saved in half precision, norms in fp32)
    CUDA context ≈ 0.5 GiB on GPUs

The activation trace counts every saved tensor once (by identity), so the estimate follows the model code
rather than a hand-written formula. The tests check it against a measured CPU peak (``peak_memory``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from jitkit.config import ModelConfig, RunConfig

GiB = 1 << 30
MiB = 1 << 20
CUDA_CONTEXT = int(0.5 * GiB)
HALF_ACT_FACTOR = 0.6
# host memory: one training process (interpreter + torch, + CUDA libraries on GPUs) and one loader worker
HOST_PROC_CPU = int(0.6 * GiB)
HOST_PROC_GPU = int(2.5 * GiB)
HOST_WORKER = 512 * MiB
# usable fraction of device memory (fragmentation, allocator caching)
DEVICE_FRACTION = 0.9
KNOWN_DATASETS = {"imagenet": 1_281_167, "imagenette": 9_469, "shapes": 3_200}


def parse_bytes(s: str | int | float) -> int:
    """'12GiB', '12G', '24 GB', '512MiB', '1.5T' or a plain number of bytes → bytes (binary units)."""
    if isinstance(s, (int, float)):
        return int(s)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", str(s).lower())
    if not m:
        raise ValueError(f"expected a memory size such as 12GiB, 24G or 512MiB, found {s!r}")
    mult = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2)]
    if m.group(2) == "" and m.group(3) not in ("", "b"):
        raise ValueError(f"expected a memory size such as 12GiB, found {s!r}")
    return int(float(m.group(1)) * mult)


def fmt_bytes(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB"


# -- activation trace ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationProfile:
    """Bytes saved for backward per image (fp32): total, per block, and outside blocks."""

    total: float
    per_block: list[float]
    block_input: float  # one block's input tensors (what checkpointing keeps per block)

    def checkpointed(self) -> float:
        """Per image with activation checkpointing: outside blocks + every block's inputs + one block."""
        outside = self.total - sum(self.per_block)
        return outside + len(self.per_block) * self.block_input + max(self.per_block, default=0.0)


_PROFILE_CACHE: dict[tuple, ActivationProfile] = {}


def activation_profile(cfg: ModelConfig, batch: int = 2) -> ActivationProfile:
    """Trace one training forward (loss included) on the meta device and count saved-tensor bytes."""
    key = tuple(sorted(cfg.replace(grad_checkpoint=False).to_dict().items()))
    if key in _PROFILE_CACHE:
        return _PROFILE_CACHE[key]
    import torch

    from jitkit.config import DiffusionConfig
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.jit import JiT

    cfg = cfg.replace(grad_checkpoint=False)
    with torch.device("meta"):
        net = JiT(cfg)
        den = Denoiser(net, DiffusionConfig(), cfg.num_classes)
    den.train()
    params = {id(p) for p in den.parameters()}
    seen: set[int] = set()
    keep: list = []
    region = ["outside"]
    totals: dict[str, float] = {}
    inputs: dict[str, float] = {}

    def pack(t):
        base = t._base if t._base is not None else t  # views share their base's memory
        if id(base) in params or id(base) in seen:
            return t
        seen.add(id(base))
        keep.append(base)
        totals[region[0]] = totals.get(region[0], 0.0) + base.numel() * base.element_size()
        return t

    hooks = []
    for i, block in enumerate(net.blocks):

        def pre(mod, args, i=i):
            region[0] = f"block{i}"
            inputs[region[0]] = float(args[0].numel() * args[0].element_size())

        def post(mod, args, out):
            region[0] = "outside"

        hooks.append(block.register_forward_pre_hook(pre))
        hooks.append(block.register_forward_hook(post))
    x = torch.zeros(batch, cfg.in_channels, cfg.img_size, cfg.img_size, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            den.loss(x, y)
    finally:
        for h in hooks:
            h.remove()
    per_block = [totals.get(f"block{i}", 0.0) / batch for i in range(cfg.depth)]
    block_in = max(inputs.values(), default=0.0) / batch
    prof = ActivationProfile(sum(totals.values()) / batch, per_block, block_in)
    _PROFILE_CACHE[key] = prof
    return prof


_COUNT_CACHE: dict[tuple, tuple[int, int]] = {}


def param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(all parameters, trainable parameters) of the network, counted on the meta device."""
    key = tuple(sorted(cfg.replace(grad_checkpoint=False).to_dict().items()))
    if key in _COUNT_CACHE:
        return _COUNT_CACHE[key]
    import torch

    from jitkit.models.jit import JiT

    with torch.device("meta"):
        net = JiT(cfg)
    total = sum(p.numel() for p in net.parameters())
    train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    _COUNT_CACHE[key] = (total, train)
    return total, train


# -- memory estimate -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    grads: int
    optimizer: int
    ema: int
    activations: int
    workspace: int
    context: int

    @property
    def state(self) -> int:
        return self.weights + self.grads + self.optimizer + self.ema

    @property
    def total(self) -> int:
        return self.state + self.activations + self.workspace + self.context

    def breakdown(self) -> str:
        return (
            f"weights {fmt_bytes(self.weights)}, grads {fmt_bytes(self.grads)}, AdamW {fmt_bytes(self.optimizer)}, "
            f"EMAs {fmt_bytes(self.ema)}, activations {fmt_bytes(self.activations)}, workspace "
            f"{fmt_bytes(self.workspace)}" + (f", context {fmt_bytes(self.context)}" if self.context else "")
        )


def estimate_memory(
    cfg: ModelConfig,
    micro_batch: int,
    *,
    precision: str = "fp32",
    grad_checkpoint: bool | None = None,
    shard_world: int = 1,
    device_kind: str = "cpu",
) -> MemoryEstimate:
    """Peak memory of one training process (see the module docstring for the terms)."""
    gc = cfg.grad_checkpoint if grad_checkpoint is None else grad_checkpoint
    P, Pt = param_counts(cfg)
    shard = max(1, shard_world)
    prof = activation_profile(cfg)
    per_img = prof.checkpointed() if gc else prof.total
    half = precision in ("bf16", "fp16")
    f = HALF_ACT_FACTOR if half else 1.0
    act = micro_batch * per_img * f
    work = micro_batch * max(prof.per_block, default=0.0) * f
    return MemoryEstimate(
        weights=4 * P // shard,
        grads=4 * Pt // shard,
        optimizer=8 * Pt // shard,
        ema=8 * P // shard,
        activations=int(act),
        workspace=int(work),
        context=CUDA_CONTEXT if device_kind == "cuda" else 0,
    )


# -- the plan --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    model: str
    img_size: int
    device_kind: str
    devices: int
    device_mem: int | None
    host_mem: int
    cpus: int
    target_batch: int
    micro_batch: int
    accum_steps: int
    effective_batch: int
    workers: int
    precision: str
    grad_checkpoint: bool
    fsdp: bool
    memory: MemoryEstimate
    host_memory: int
    lr: float
    blr: float
    steps_per_epoch: int | None
    dataset_size: int | None
    warnings: list[str] = field(default_factory=list)
    alternatives: list[tuple[str, int, int, int]] = field(default_factory=list)  # (label, micro, accum, peak)

    @property
    def fits(self) -> bool:
        return not any(w.startswith("does not fit") for w in self.warnings)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("memory",)}
        d["peak_device_memory"] = self.memory.total
        d["memory_breakdown"] = self.memory.__dict__
        return d

    def render(self) -> str:
        kind = (
            f"{self.devices} × {self.device_kind.upper()} with {fmt_bytes(self.device_mem)}"
            if self.device_kind != "cpu" and self.device_mem
            else f"{self.devices} × {self.device_kind}"
        )
        lines = [
            f"plan for {self.model} at {self.img_size}px on {kind}; host {fmt_bytes(self.host_mem)}, {self.cpus} CPUs",
            f"  effective batch   {self.effective_batch} = micro-batch {self.micro_batch} × accumulation "
            f"{self.accum_steps} × {self.devices} process(es)"
            + ("" if self.effective_batch == self.target_batch else f"  (target {self.target_batch})"),
            f"  precision         {self.precision}"
            + ("  + activation checkpointing" if self.grad_checkpoint else "")
            + ("  + FSDP sharding" if self.fsdp else ""),
            f"  device memory     ~{fmt_bytes(self.memory.total)} peak per process ({self.memory.breakdown()})",
            f"  host memory       ~{fmt_bytes(self.host_memory)} ({self.workers} loader worker(s) per process)",
            f"  learning rate     {self.lr:.3g} = blr {self.blr:g} × {self.effective_batch} / 256",
        ]
        if self.steps_per_epoch:
            lines.append(f"  steps per epoch   {self.steps_per_epoch:,} ({self.dataset_size:,} images)")
        for label, mb, acc, peak in self.alternatives:
            lines.append(f"  {label:<17} micro-batch {mb} × accumulation {acc}: ~{fmt_bytes(peak)} peak")
        flags = f"--batch-size {self.micro_batch} --set train.global_batch={self.effective_batch}"
        if self.grad_checkpoint:
            flags += " --grad-checkpoint"
        if self.fsdp:
            flags += " --fsdp"
        lines.append(f"  train with        jitkit train ... {flags}")
        for w in self.warnings:
            lines.append(f"  WARNING: {w}")
        return "\n".join(lines)


def detect_hardware() -> dict[str, Any]:
    """Device kind, count and memory, host memory and CPUs of this machine."""
    import torch

    from jitkit.data.loader import cpu_count

    host = _host_total_memory()
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        mem = min(torch.cuda.get_device_properties(i).total_memory for i in range(n))
        return {"device_kind": "cuda", "devices": n, "device_mem": mem, "host_mem": host, "cpus": cpu_count()}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        # unified memory: the GPU may use about 2/3 of it
        return {
            "device_kind": "mps",
            "devices": 1,
            "device_mem": host * 2 // 3,
            "host_mem": host,
            "cpus": cpu_count(),
        }
    return {"device_kind": "cpu", "devices": 1, "device_mem": None, "host_mem": host, "cpus": cpu_count()}


def _host_total_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def make_plan(
    cfg: ModelConfig,
    *,
    target_batch: int,
    device_kind: str,
    devices: int = 1,
    device_mem: int | None = None,
    host_mem: int,
    cpus: int,
    blr: float = 5e-5,
    precision: str = "auto",
    grad_checkpoint: bool | None = None,
    fsdp: bool = False,
    dataset_size: int | None = None,
    max_micro: int | None = None,
) -> Plan:
    """Choose micro-batch, accumulation, workers, precision (and checkpointing) for a target effective batch.

    The micro-batch is the largest divisor of target/devices whose estimated peak fits in 90% of the device
    memory (host memory for CPU training, shared by the processes); activation checkpointing is switched
    on (when not decided by the caller) only if nothing fits without it.
    """
    if device_kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device kind must be cpu, cuda or mps, found {device_kind!r}")
    devices = max(1, int(devices))
    if target_batch < devices:
        raise ValueError(f"target batch {target_batch} is smaller than the number of devices {devices}")
    warnings: list[str] = []
    per_dev = target_batch // devices
    if target_batch % devices:
        warnings.append(
            f"target batch {target_batch} is not divisible by {devices} devices; using {per_dev * devices}"
        )
    if precision == "auto":
        precision = "bf16" if device_kind == "cuda" else "fp32"
    budget_mem = device_mem if device_kind != "cpu" else host_mem // devices
    if budget_mem is None:
        raise ValueError(f"give the memory of one {device_kind} device (device_mem)")
    budget = DEVICE_FRACTION * budget_mem - (HOST_PROC_CPU if device_kind == "cpu" else 0)
    cands = [d for d in _divisors(per_dev) if max_micro is None or d <= max_micro]
    shard = devices if fsdp else 1

    def best(gc: bool) -> tuple[int, MemoryEstimate]:
        chosen = None
        for mb in sorted(cands):
            est = estimate_memory(
                cfg, mb, precision=precision, grad_checkpoint=gc, shard_world=shard, device_kind=device_kind
            )
            if est.total <= budget:
                chosen = (mb, est)
        if chosen is None:
            mb = 1
            chosen = (
                mb,
                estimate_memory(
                    cfg,
                    1,
                    precision=precision,
                    grad_checkpoint=gc,
                    shard_world=shard,
                    device_kind=device_kind,
                ),
            )
        return chosen

    alternatives = []
    if grad_checkpoint is None:
        mb, est = best(False)
        gc = False
        mb_gc, est_gc = best(True)
        if est.total > budget and est_gc.total <= budget or (mb_gc >= 2 * mb and mb < min(per_dev, 32)):
            alternatives.append(("without ckpt", mb, per_dev // mb, est.total))
            mb, est, gc = mb_gc, est_gc, True
        else:
            alternatives.append(("with ckpt", mb_gc, per_dev // mb_gc, est_gc.total))
    else:
        gc = grad_checkpoint
        mb, est = best(gc)
        mb_o, est_o = best(not gc)
        alternatives.append(("with ckpt" if not gc else "without ckpt", mb_o, per_dev // mb_o, est_o.total))
    if est.total > budget:
        where = "device" if device_kind != "cpu" else "host"
        warnings.append(
            f"does not fit: even micro-batch 1 needs ~{fmt_bytes(est.total)} per process but the {where} "
            f"allows ~{fmt_bytes(budget)}"
            + (
                ""
                if fsdp or devices == 1
                else "; try FSDP (train.fsdp) to shard the weights and optimizer state"
            )
        )
    accum = per_dev // mb
    eff = mb * accum * devices

    # loader workers and host memory
    from jitkit.data.loader import plan_workers

    proc_host = HOST_PROC_GPU if device_kind == "cuda" else HOST_PROC_CPU
    host_train = est.total if device_kind == "cpu" else 0
    free_for_workers = max(0, host_mem - devices * (proc_host + host_train))
    lp = plan_workers(
        cpus=cpus,
        mem_available=free_for_workers,
        batch_bytes=mb * 3 * cfg.img_size * cfg.img_size,
        world_size=devices,
    )
    workers = lp.workers
    host_total = devices * (
        proc_host + host_train + workers * (HOST_WORKER + 2 * 2 * mb * 3 * cfg.img_size**2)
    )
    if host_total > host_mem:
        warnings.append(
            f"does not fit: the host needs ~{fmt_bytes(host_total)} but has {fmt_bytes(host_mem)}; "
            "lower the batch size or the number of processes"
        )
    if device_kind == "cpu" and precision == "fp16":
        warnings.append("fp16 is not supported for CPU training; use fp32 or bf16")
    if device_kind == "cuda" and precision == "fp32":
        warnings.append("fp32 on CUDA is slow; bf16 autocast (the default) is recommended")
    if accum > 1 and mb < 8:
        warnings.append(
            f"micro-batch {mb} is small; steps will be slow. More devices or FSDP (train.fsdp) may help"
        )
    steps = dataset_size // eff if dataset_size else None
    if dataset_size is not None and dataset_size < eff:
        warnings.append(f"the data set ({dataset_size} images) is smaller than one effective batch ({eff})")
    return Plan(
        model=cfg.name,
        img_size=cfg.img_size,
        device_kind=device_kind,
        devices=devices,
        device_mem=device_mem,
        host_mem=host_mem,
        cpus=cpus,
        target_batch=target_batch,
        micro_batch=mb,
        accum_steps=accum,
        effective_batch=eff,
        workers=workers,
        precision=precision,
        grad_checkpoint=gc,
        fsdp=fsdp,
        memory=est,
        host_memory=int(host_total),
        lr=blr * eff / 256,
        blr=blr,
        steps_per_epoch=steps,
        dataset_size=dataset_size,
        warnings=warnings,
        alternatives=alternatives,
    )


def dataset_size_for(data: str, per_class: int = 200) -> int | None:
    """Known sizes of named data sets (None when unknown without scanning it)."""
    d = str(data).strip().lower()
    if d == "shapes":
        return 16 * per_class
    for k, v in KNOWN_DATASETS.items():
        if d == k or d.rstrip("/").endswith("/" + k):
            return v
    return None


def auto_batch(cfg: RunConfig, world_size: int) -> tuple[RunConfig, Plan]:
    """``cfg`` with micro-batch, effective batch and activation checkpointing from :func:`make_plan` for this
    machine (the detected host, ``cfg.train.device`` and ``world_size`` processes), and the plan.

    The target effective batch is ``train.global_batch``, else batch_size × accum_steps × world_size; the
    accumulation follows from ``global_batch`` (``accum_steps`` is reset to 1).
    """
    from jitkit.runtime import resolve_device

    tc, hw = cfg.train, detect_hardware()
    kind = resolve_device(tc.device).type
    plan = make_plan(
        cfg.model,
        target_batch=tc.global_batch or tc.batch_size * tc.accum_steps * world_size,
        device_kind=kind,
        devices=world_size,
        device_mem=hw["device_mem"] if kind == hw["device_kind"] else None,
        host_mem=hw["host_mem"],
        cpus=hw["cpus"],
        blr=tc.blr,
        precision=tc.precision,
        fsdp=tc.fsdp,
        dataset_size=dataset_size_for(cfg.data.data, cfg.data.per_class),
    )
    upd = {
        "train.batch_size": plan.micro_batch,
        "train.global_batch": plan.effective_batch,
        "train.accum_steps": 1,
        "model.grad_checkpoint": plan.grad_checkpoint,
    }
    return cfg.override(upd), plan
