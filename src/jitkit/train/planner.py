"""The hardware planner behind ``jitkit plan`` and ``jitkit train --batch-size auto``.

From a model config, the devices (kind, count, memory, processes per host), the host (CPUs, memory) and a
target effective batch it chooses micro-batch, gradient accumulation, DataLoader workers and precision, and
estimates the peak device memory per process (:mod:`jitkit.train.peak_memory`, whose docstring lists the
terms) and the memory of one host.

Host memory and CPUs are per host: with several nodes the plan counts the processes on one host
(``devices_per_host``; torchrun's LOCAL_WORLD_SIZE), not the world size. The busiest host is rank 0's: beside
its processes and their loader workers it receives every checkpoint, the model and both EMAs in float32
gathered one tensor at a time to its RAM (12P bytes), and under FSDP also the whole AdamW state (8P_t).

``precision="auto"`` follows the runtime's rule (:func:`jitkit.runtime.device.auto_precision`): bf16 on CUDA
GPUs with native bf16 (compute capability ≥ 8.0), fp16 on older ones, fp32 on MPS and CPUs. The planned GPU
need not be present: ``bf16_native`` says what it has, and when it is not given the plan assumes an Ampere or
newer GPU and says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from jitkit.config import ModelConfig, RunConfig
from jitkit.train.peak_memory import (
    CUDA_CONTEXT,
    HALF_ACT_FACTOR,
    ActivationProfile,
    GiB,
    MemoryEstimate,
    MiB,
    ParamCounts,
    activation_profile,
    estimate_memory,
    fmt_bytes,
    param_counts,
)

__all__ = [
    "CUDA_CONTEXT",
    "GiB",
    "HALF_ACT_FACTOR",
    "MiB",
    "ActivationProfile",
    "MemoryEstimate",
    "ParamCounts",
    "Plan",
    "activation_profile",
    "auto_batch",
    "checkpoint_host_bytes",
    "dataset_size_for",
    "detect_hardware",
    "estimate_memory",
    "fmt_bytes",
    "make_plan",
    "param_counts",
    "parse_bytes",
]

# host memory: one training process (interpreter + torch, + CUDA libraries on GPUs) and one loader worker
HOST_PROC_CPU = int(0.6 * GiB)
HOST_PROC_GPU = int(2.5 * GiB)
HOST_WORKER = 512 * MiB
# usable fraction of device memory (fragmentation, allocator caching)
DEVICE_FRACTION = 0.9
KNOWN_DATASETS = {"imagenet": 1_281_167, "imagenette": 9_469, "shapes": 3_200}
ASSUMED_BF16 = (
    "precision auto: assumed a GPU with native bf16 (compute capability >= 8.0, Ampere or newer); "
    "on older GPUs (T4, V100) auto means fp16 with a GradScaler"
)


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


def checkpoint_host_bytes(cfg: ModelConfig, fsdp: bool = False) -> int:
    """Host RAM that a checkpoint takes on rank 0: model and both EMAs in float32 (12P), and under FSDP the
    whole AdamW state gathered to rank 0's host as well (8P_t)."""
    n = param_counts(cfg)
    return 12 * n.total + (8 * n.trainable if fsdp else 0)


# -- the plan --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    model: str
    img_size: int
    device_kind: str
    devices: int
    devices_per_host: int
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
    checkpoint_host: int
    lr: float
    blr: float
    steps_per_epoch: int | None
    dataset_size: int | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    alternatives: list[tuple[str, int, int, int]] = field(default_factory=list)  # (label, micro, accum, peak)

    @property
    def nodes(self) -> int:
        return -(-self.devices // self.devices_per_host)

    @property
    def fits(self) -> bool:
        return not any(w.startswith("does not fit") for w in self.warnings)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("memory",)}
        d["nodes"] = self.nodes
        d["peak_device_memory"] = self.memory.total
        d["memory_breakdown"] = self.memory.__dict__
        return d

    def render(self) -> str:
        kind = (
            f"{self.devices_per_host} × {self.device_kind.upper()} with {fmt_bytes(self.device_mem)}"
            if self.device_kind != "cpu" and self.device_mem
            else f"{self.devices_per_host} × {self.device_kind}"
        )
        if self.nodes > 1:
            kind = f"{self.nodes} hosts × {kind} ({self.devices} processes)"
        host = "host" if self.nodes == 1 else "each host"
        lines = [
            f"plan for {self.model} at {self.img_size}px on {kind}; {host} {fmt_bytes(self.host_mem)}, "
            f"{self.cpus} CPUs",
            f"  effective batch   {self.effective_batch} = micro-batch {self.micro_batch} × accumulation "
            f"{self.accum_steps} × {self.devices} process(es)"
            + ("" if self.effective_batch == self.target_batch else f"  (target {self.target_batch})"),
            f"  precision         {self.precision}"
            + ("  + activation checkpointing" if self.grad_checkpoint else "")
            + ("  + FSDP sharding" if self.fsdp else ""),
            f"  device memory     ~{fmt_bytes(self.memory.total)} peak per process ({self.memory.breakdown()})",
            f"  host memory       ~{fmt_bytes(self.host_memory)}"
            + (" on rank 0's host" if self.nodes > 1 else "")
            + f" ({self.devices_per_host} process(es), {self.workers} loader worker(s) each, checkpoints "
            f"{fmt_bytes(self.checkpoint_host)})",
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
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def detect_hardware() -> dict[str, Any]:
    """Device kind, count and memory (and on CUDA whether every GPU has native bf16), host memory and CPUs."""
    import torch

    from jitkit.data.loader import cpu_count
    from jitkit.runtime.device import mps_available, native_bf16

    host = _host_total_memory()
    hw: dict[str, Any] = {"device_kind": "cpu", "devices": 1, "device_mem": None, "host_mem": host}
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        mem = min(torch.cuda.get_device_properties(i).total_memory for i in range(n))
        bf16 = all(native_bf16(torch.device("cuda", i)) for i in range(n))
        hw.update(device_kind="cuda", devices=n, device_mem=mem, bf16_native=bf16)
    elif mps_available():
        hw.update(device_kind="mps", device_mem=host * 2 // 3)  # unified memory: the GPU may use about 2/3
    return hw | {"cpus": cpu_count()}


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


def _plan_precision(
    precision: str, device_kind: str, bf16_native: bool | None
) -> tuple[str, list[str], list[str]]:
    """The precision the runtime would resolve on the planned device, with notes and warnings about it."""
    from jitkit.runtime.device import PRECISIONS, auto_precision

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    notes, warnings = [], []
    if precision == "auto":
        if device_kind == "cuda" and bf16_native is None:
            notes.append(ASSUMED_BF16)
        return auto_precision(device_kind, bf16_native is not False), notes, warnings
    if precision == "bf16" and device_kind == "cuda" and bf16_native is False:
        warnings.append(
            "bf16 on a GPU without native bf16 (compute capability < 8.0) is emulated and slow; use fp16"
        )
    return precision, notes, warnings


def make_plan(
    cfg: ModelConfig,
    *,
    target_batch: int,
    device_kind: str,
    devices: int = 1,
    devices_per_host: int | None = None,
    device_mem: int | None = None,
    host_mem: int,
    cpus: int,
    blr: float = 5e-5,
    precision: str = "auto",
    bf16_native: bool | None = None,
    grad_checkpoint: bool | None = None,
    fsdp: bool = False,
    dataset_size: int | None = None,
    max_micro: int | None = None,
    evaluation: bool = True,
) -> Plan:
    """Choose micro-batch, accumulation, workers, precision (and checkpointing) for a target effective batch.

    ``devices`` processes in all, ``devices_per_host`` of them on each host (default: all on one), each host
    with ``host_mem`` bytes and ``cpus`` CPUs. The micro-batch is the largest divisor of target/devices whose
    estimated peak fits in 90% of the device memory (of the host memory shared by one host's processes for
    CPU training); activation checkpointing is switched on (when not decided by the caller) only if nothing
    fits without it. ``bf16_native`` (the planned GPUs have compute capability ≥ 8.0) decides what
    ``precision="auto"`` means on CUDA; None assumes they do. ``evaluation`` counts the replica of the EMA
    weights that sampling during training builds (every run writes samples at its end at least).
    """
    if device_kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device_kind must be cpu, cuda or mps, found {device_kind!r}")
    devices = max(1, int(devices))
    per_host = devices if devices_per_host is None else int(devices_per_host)
    if not 1 <= per_host <= devices:
        raise ValueError(f"devices_per_host must lie in [1, devices={devices}], found {devices_per_host}")
    if target_batch < devices:
        raise ValueError(f"target batch {target_batch} is smaller than the number of devices {devices}")
    warnings: list[str] = []
    per_dev = target_batch // devices
    if target_batch % devices:
        warnings.append(
            f"target batch {target_batch} is not divisible by {devices} devices; using {per_dev * devices}"
        )
    if devices % per_host:
        warnings.append(f"{devices} processes do not fill hosts of {per_host}; planned for full hosts")
    precision, notes, said = _plan_precision(precision, device_kind, bf16_native)
    warnings += said
    budget_mem = device_mem if device_kind != "cpu" else host_mem // per_host
    if budget_mem is None:
        raise ValueError(f"give the memory of one {device_kind} device (device_mem)")
    budget = DEVICE_FRACTION * budget_mem - (HOST_PROC_CPU if device_kind == "cpu" else 0)
    cands = [d for d in _divisors(per_dev) if max_micro is None or d <= max_micro]
    kw = dict(
        precision=precision, world_size=devices, fsdp=fsdp, device_kind=device_kind, evaluation=evaluation
    )

    def best(gc: bool) -> tuple[int, MemoryEstimate]:
        chosen = (1, estimate_memory(cfg, 1, grad_checkpoint=gc, **kw))
        for mb in sorted(cands):
            est = estimate_memory(cfg, mb, grad_checkpoint=gc, **kw)
            if est.total <= budget:
                chosen = (mb, est)
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

    # one host: its processes, their loader workers and (rank 0's host) the checkpoints
    from jitkit.data.loader import plan_workers

    proc_host = HOST_PROC_GPU if device_kind == "cuda" else HOST_PROC_CPU
    host_train = est.total if device_kind == "cpu" else 0
    ckpt_host = checkpoint_host_bytes(cfg, fsdp=fsdp and devices > 1)
    free_for_workers = max(0, host_mem - per_host * (proc_host + host_train) - ckpt_host)
    lp = plan_workers(
        cpus=cpus,
        mem_available=free_for_workers,
        batch_bytes=mb * 3 * cfg.img_size * cfg.img_size,
        processes_per_host=per_host,
    )
    workers = lp.workers
    host_total = (
        per_host * (proc_host + host_train + workers * (HOST_WORKER + 2 * 2 * mb * 3 * cfg.img_size**2))
        + ckpt_host
    )
    if host_total > host_mem:
        warnings.append(
            f"does not fit: the host needs ~{fmt_bytes(host_total)} but has {fmt_bytes(host_mem)}; "
            "lower the batch size or the number of processes per host"
        )
    if device_kind == "cpu" and precision == "fp16":
        warnings.append("fp16 is not supported for CPU training; use fp32 or bf16")
    if device_kind == "cuda" and precision == "fp32":
        warnings.append("fp32 on CUDA is slow; half-precision autocast (auto) is recommended")
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
        devices_per_host=per_host,
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
        checkpoint_host=ckpt_host,
        lr=blr * eff / 256,
        blr=blr,
        steps_per_epoch=steps,
        dataset_size=dataset_size,
        warnings=warnings,
        notes=notes,
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


def auto_batch(
    cfg: RunConfig, world_size: int, local_world_size: int | None = None
) -> tuple[RunConfig, Plan]:
    """``cfg`` with micro-batch, effective batch and activation checkpointing from :func:`make_plan` for this
    machine (the detected host and GPUs, ``cfg.train.device``, ``world_size`` processes of which
    ``local_world_size`` run on this host: by default torchrun's LOCAL_WORLD_SIZE), and the plan.

    The target effective batch is ``train.global_batch``, else batch_size × accum_steps × world_size; the
    accumulation follows from ``global_batch`` (``accum_steps`` is reset to 1).
    """
    from jitkit.runtime import resolve_device
    from jitkit.runtime.dist import local_world_size as env_local_world_size

    tc, hw = cfg.train, detect_hardware()
    kind = resolve_device(tc.device).type
    local = env_local_world_size() if local_world_size is None else local_world_size
    here = kind == hw["device_kind"]
    plan = make_plan(
        cfg.model,
        target_batch=tc.global_batch or tc.batch_size * tc.accum_steps * world_size,
        device_kind=kind,
        devices=world_size,
        devices_per_host=max(1, min(local, world_size)),
        device_mem=hw["device_mem"] if here else None,
        host_mem=hw["host_mem"],
        cpus=hw["cpus"],
        blr=tc.blr,
        precision=tc.precision,
        bf16_native=hw.get("bf16_native") if here else None,
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
