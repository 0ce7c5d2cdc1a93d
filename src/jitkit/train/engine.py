"""The training engine: one loop for a 2-core laptop, a Mac, one GPU or a torchrun job.

Per optimiser step (the effective batch G = m · k · W: micro-batch m, accumulation k, world size W):

    lr  = lr_at(step / steps_per_epoch)                         (warm-up, then constant or cosine)
    for a in 0 … k−1:                                           (no gradient all-reduce before a = k−1)
        chunk c = a·W + rank:  images perm_epoch[step·G + c·m : step·G + (c+1)·m]
        loss_a = Denoiser.loss(x_c, y_c; generator seeded by (seed, step, c));  backward(loss_a / k)
    clip ‖g‖ (optional); AdamW step; EMA_i ← d_i·EMA_i + (1 − d_i)·θ  (i = 1, 2)

Determinism: the data order is a permutation drawn from (seed, epoch), and every random draw of a chunk
(label drop, t, noise, flips, dropout) comes from a generator seeded by (seed, step, chunk). A run therefore
depends only on its config: an interrupted-then-resumed run repeats the uninterrupted one, and W processes
with micro-batch m reproduce one process with micro-batch m and k·W accumulation steps.

Shape key: B micro-batch, C channels, S image side; images [B, C, S, S] uint8 on the host, float on the device.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jitkit.checkpoint import (
    check_state_dict,
    latest_checkpoint,
    link_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_dir_name,
)
from jitkit.config import RunConfig, TrainConfig
from jitkit.data import random_hflip, to_model_range
from jitkit.fileio import atomic_save_figure, atomic_write_text
from jitkit.runtime import autocast, dist, resolve_device, resolve_precision
from jitkit.train.ema import EMA, unwrap_model
from jitkit.train.schedule import lr_at, scaled_lr, set_lr

__all__ = [
    "BatchPlan",
    "NonFiniteLossError",
    "StopTraining",
    "batch_plan",
    "chunk_seed",
    "epoch_permutation",
    "train",
]

Callback = Callable[[str, dict], Any]


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a callback to stop the run cleanly (a checkpoint is saved first)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the step was not applied and earlier checkpoints are intact."""


# -- small pure helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int
    accum_steps: int
    world_size: int

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accum_steps * self.world_size


def batch_plan(tc: TrainConfig, world_size: int = 1) -> BatchPlan:
    """Micro-batch, accumulation and effective batch from the config and the world size.

    ``global_batch`` > 0 fixes the effective batch and derives the accumulation:
    accum = global_batch / (batch_size · world_size), which must be a whole number.
    """
    m, W = int(tc.batch_size), max(1, int(world_size))
    if tc.global_batch and tc.global_batch > 0:
        per = m * W
        if tc.global_batch % per:
            lo = max(per, tc.global_batch // per * per)
            hi = lo + per if lo < tc.global_batch else lo
            divisors = [b for b in range(1, tc.global_batch // W + 1) if (tc.global_batch // W) % b == 0]
            fits = [b for b in divisors if b <= m]
            hint = ""
            if tc.global_batch % W == 0 and fits:
                hint = f", or a micro-batch dividing {tc.global_batch // W} such as {fits[-1]}"
            raise ValueError(
                f"global batch {tc.global_batch} is not divisible by micro-batch {m} × world size {W} = "
                f"{per}: accumulation steps must be a whole number. Choose global_batch {lo} or {hi}{hint}"
            )
        accum = tc.global_batch // per
        if tc.accum_steps not in (1, accum):
            raise ValueError(
                f"accum_steps={tc.accum_steps} contradicts global_batch={tc.global_batch} with micro-batch "
                f"{m} × world size {W} (which needs {accum}); set only one of them"
            )
        return BatchPlan(m, accum, W)
    return BatchPlan(m, int(tc.accum_steps), W)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch: a permutation of range(n) that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1))
    return torch.randperm(n, generator=g)


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """The seed of all random draws of micro-batch chunk ``chunk`` of optimiser step ``step``."""
    x = int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + int(chunk) * 0x94D049BB133111EB + 1
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & ((1 << 62) - 1)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not on biases and 1-D parameters) when it is non-zero."""
    params = [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad]
    if weight_decay <= 0:
        return [{"params": [p for _, p in params], "weight_decay": 0.0}]
    decay = [p for n, p in params if p.ndim >= 2 and not n.endswith(".bias")]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and not n.endswith(".bias"))]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    model: nn.Module,
    tc: TrainConfig,
    lr: float,
    device: torch.device,
    ema: EMA | None = None,
) -> torch.optim.Optimizer:
    """AdamW (β1, β2): torch's fused kernel where it has one for the device (CPU, CUDA, MPS; 1.3× the foreach
    step on CPU, benchmarks/README.md), else the foreach implementation.

    With ``ema`` the optimiser is :class:`jitkit.train.optim.AdamWEMA`, whose step also updates the EMAs in the
    same pass over memory (a compiled kernel); the caller then skips ``ema.update``.
    """
    groups = param_groups(model, tc.weight_decay)
    kw: dict[str, Any] = {"lr": lr, "betas": (tc.beta1, tc.beta2), "weight_decay": tc.weight_decay}
    if ema is not None:
        from jitkit.train.optim import AdamWEMA

        return AdamWEMA(groups, ema=ema, model=model, **kw)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        pass
    return torch.optim.AdamW(groups, foreach=True, **kw)


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Generator | None, int | None]],
    *,
    device: torch.device,
    precision: str = "fp32",
    scaler=None,
) -> torch.Tensor:
    """Forward and backward over k micro-batches (x, y, generator, seed): backward(loss_a / k) each, so the
    gradients add up to those of the mean loss over the k·m images; the gradient all-reduce (DDP/FSDP) runs
    only on the last one. ``seed`` (if not None) re-seeds the global generator first (dropout).
    Returns the mean of the k micro-batch losses (detached)."""
    k = len(micro_batches)
    total = torch.zeros((), device=device)
    for a, (x, y, gen, seed) in enumerate(micro_batches):
        if seed is not None:
            torch.manual_seed(seed)
        with dist.no_sync(model, a < k - 1), autocast(device, precision):
            loss = model(x, y, generator=gen)
        scaled = loss / k
        if scaler is not None:
            scaler.scale(scaled).backward()
        else:
            scaled.backward()
        total += loss.detach().float()
    return total / k


# -- data ----------------------------------------------------------------------------------------------------


class _IndexView(torch.utils.data.Dataset):
    """The items of ``base`` at ``indices``, in that order (the rank's share of an epoch, from a position)."""

    def __init__(self, base, indices: torch.Tensor) -> None:
        self.base, self.indices = base, indices.tolist()
        self.img_size = getattr(base, "img_size", 0)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def rank_chunk_indices(
    perm: torch.Tensor, plan: BatchPlan, rank: int, start_step: int, steps: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(step, chunk, indices [m]) this rank consumes from ``start_step`` to ``steps`` of an epoch."""
    G, m, W = plan.effective_batch, plan.micro_batch, plan.world_size
    for s in range(start_step, steps):
        for a in range(plan.accum_steps):
            c = a * W + rank
            lo = s * G + c * m
            yield s, c, perm[lo : lo + m]


class _Batches:
    """Yields uint8 image batches and labels of a rank's chunks: from in-memory tensors, or a DataLoader."""

    def __init__(self, dataset, device: torch.device, data_workers: int, world_size: int) -> None:
        self.ds = dataset
        self.device = device
        self.in_memory = hasattr(dataset, "images") and hasattr(dataset, "labels")
        self.workers = data_workers
        self.world_size = world_size
        if self.in_memory:
            images, labels = dataset.images, dataset.labels
            small = images.numel() * images.element_size() < (1 << 30)
            mmap = bool(getattr(dataset, "memory_mapped", False))
            self.images = images.to(device) if small and not mmap else images
            self.labels = torch.as_tensor(labels).to(self.images.device)
        elif hasattr(dataset, "hflip"):
            dataset.hflip = False  # flips happen on the device, from the chunk's generator

    def epoch(
        self, chunks: list[tuple[int, int, torch.Tensor]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not chunks:
            return
        if self.in_memory:
            for _, _, idx in chunks:
                idx = idx.to(self.images.device)
                yield (
                    self.images.index_select(0, idx).to(self.device, non_blocking=True),
                    self.labels.index_select(0, idx).to(self.device, non_blocking=True),
                )
            return
        from jitkit.data import make_loader
        from jitkit.data.loader import available_memory, cpu_count, plan_workers

        m = len(chunks[0][2])
        flat = torch.cat([idx for _, _, idx in chunks])
        workers = self.workers
        if workers is None or workers < 0:
            s = int(getattr(self.ds, "img_size", 256) or 256)
            workers = plan_workers(
                cpus=cpu_count(),
                mem_available=available_memory(),
                batch_bytes=m * 3 * s * s,
                world_size=self.world_size,
            ).workers
        loader = make_loader(
            _IndexView(self.ds, flat),
            m,
            shuffle=False,
            workers=workers,
            device=self.device,
            drop_last=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), torch.as_tensor(y).to(self.device, non_blocking=True)


# -- output helpers (rank 0 only) -----------------------------------------------------------------------------


def plot_loss(log_path: Path, out_png: Path) -> Path | None:
    """loss.png from log.jsonl: the logged loss against the step (log scale), with a smoothed curve."""
    rows = read_log(log_path)
    pts = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps, losses = zip(*pts)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(
        steps, losses, lw=0.8, alpha=0.45, marker="o" if len(pts) < 20 else None, label="loss (logged mean)"
    )
    k = max(1, len(losses) // 25)
    if k > 1:
        sm = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, sm, lw=1.6, label=f"moving mean ({k} points)")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("v-loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, out_png)
    plt.close(fig)
    return out_png


def read_log(log_path: str | Path) -> list[dict]:
    """The records of a log.jsonl (a partial last line from a kill is skipped)."""
    out = []
    p = Path(log_path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class _LazyInfo(dict):
    """A callback info dict whose ``denoiser`` (EMA1 weights, eval mode) is built only when asked for."""

    def __init__(self, factory: Callable[[], nn.Module], **kw: Any) -> None:
        super().__init__(**kw)
        self._factory = factory

    def __missing__(self, key: str):
        if key == "denoiser":
            self["denoiser"] = self._factory()
            return self["denoiser"]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key == "denoiser" or super().__contains__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


# -- the run folder ------------------------------------------------------------------------------------------


def find_resume_run(out: str | Path) -> Path | None:
    """For ``--resume auto``: the most recent run folder among OUT and OUT-N holding a checkpoint."""
    out = Path(out)
    cands = [out] + sorted(out.parent.glob(f"{out.name}-*")) if out.parent.exists() else [out]
    best, best_t = None, -1.0
    for c in cands:
        ck = latest_checkpoint(c) if c.is_dir() else None
        if ck is None:
            continue
        t = (ck / "meta.json").stat().st_mtime
        if t > best_t:
            best, best_t = c, t
    return best


def fresh_run_dir(out: str | Path) -> Path:
    """OUT if it is new or empty, else the first free OUT-2, OUT-3, … (an existing run is never overwritten)."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a folder for the run")
    k = 2
    while (out.parent / f"{out.name}-{k}").exists():
        k += 1
    return out.parent / f"{out.name}-{k}"


# -- the engine --------------------------------------------------------------------------------------------


class _SignalFlag:
    """First SIGINT/SIGTERM: finish the step, save, exit. A second one interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n[jitkit] {signal.Signals(signum).name}: saving a checkpoint after this step "
            "(send it again to stop immediately)",
            file=sys.stderr,
            flush=True,
        )

    def restore(self) -> None:
        for s, h in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, h)
        self._old.clear()


def train(
    cfg: RunConfig,
    *,
    resume: str | None = None,
    callbacks: list[Callback] | None = None,
    classes: list[str] | None = None,
    dataset=None,
    progress: bool = True,
    run_dir: str | Path | None = None,
) -> Path:
    """Train a JiT as described by ``cfg`` and return the run folder.

    ``resume``: None (fresh run in ``cfg.train.out``, or the next free ``OUT-N`` if it is taken), ``"auto"``
    (continue the latest run under OUT; fresh if there is none) or a path (run folder, checkpoint folder or a
    file in one; it must load). ``callbacks``: ``cb(event, info)`` for events "step", "epoch_end", "end";
    info has step, epoch, run_dir, config and a lazily built ``denoiser`` (EMA1, eval mode). A callback may
    raise ``StopTraining`` to end the run after a checkpoint. ``dataset`` overrides ``build_dataset``.
    """
    return _Trainer(cfg, resume, callbacks or [], classes, dataset, progress, run_dir).run()


class _Trainer:
    def __init__(self, cfg, resume, callbacks, classes, dataset, progress, run_dir) -> None:
        self.cfg: RunConfig = cfg
        self.resume = resume
        self.callbacks = callbacks
        self.classes = classes
        self.dataset = dataset
        self.progress = progress
        self.run_dir_arg = run_dir

    # setup -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, tc = self.cfg, self.cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)
        self.info = dist.init(self.device)
        self.device = self.info.device
        self.main = self.info.is_main
        self.precision = resolve_precision(tc.precision, self.device)
        self.plan = batch_plan(tc, self.info.world_size)

        # data
        if self.dataset is None:
            from jitkit.data import build_dataset

            self.dataset = build_dataset(cfg.data, "train")
        ds = self.dataset
        if not hasattr(ds, "img_size"):
            raise ValueError(f"data {cfg.data.data!r} is not an image data set; jitkit train needs images")
        if getattr(ds, "classes", None) is None:
            raise ValueError(f"data {cfg.data.data!r} has no class list")
        self.classes = list(self.classes or ds.classes)
        if int(ds.img_size) != cfg.model.img_size:
            raise ValueError(
                f"the data has {ds.img_size}px images but model {cfg.model.name} is configured for "
                f"img_size={cfg.model.img_size}; set --set model.img_size={ds.img_size} (and data.img_size)"
            )
        if len(self.classes) != cfg.model.num_classes:
            raise ValueError(
                f"the data has {len(self.classes)} classes but model.num_classes={cfg.model.num_classes}; "
                f"set --set model.num_classes={len(self.classes)}"
            )
        self.n_data = len(ds)
        G = self.plan.effective_batch
        if self.n_data < G:
            raise ValueError(
                f"the data set has {self.n_data} images, fewer than one effective batch of {G} "
                f"(micro-batch {self.plan.micro_batch} × accumulation {self.plan.accum_steps} × world size "
                f"{self.plan.world_size}); lower the batch size"
            )
        self.steps_per_epoch = self.n_data // G
        self.total_steps = tc.max_steps if tc.max_steps > 0 else tc.epochs * self.steps_per_epoch
        self.total_epochs = self.total_steps / self.steps_per_epoch
        self.lr = tc.lr if tc.lr > 0 else scaled_lr(tc.blr, G)

        # model
        from jitkit.diffusion.flow import Denoiser
        from jitkit.models.registry import build_model

        torch.manual_seed(tc.seed)
        net = build_model(cfg.model)
        self.raw = Denoiser(net, cfg.diffusion, cfg.model.num_classes).to(self.device)
        self.raw.train()
        compiled = False
        if tc.compile:
            from jitkit.models.registry import compiler_available

            ok, why = compiler_available(self.device)
            if ok and tc.fsdp and self.info.enabled:
                ok, why = False, "compiled blocks under FSDP2 are not tested by jitkit yet"
            if ok:
                self.raw.net.compile_blocks()  # in place: the state dict keeps its keys
                compiled = True
            elif self.main:
                print(f"[jitkit] --compile ignored: {why}; training eagerly", flush=True)
        self.fwd = dist.wrap_model(self.raw, self.info, fsdp=tc.fsdp)
        self.ema = EMA(self.raw, (tc.ema_decay1, tc.ema_decay2), warmup=tc.ema_warmup)
        self.scaler = (
            torch.amp.GradScaler(self.device.type)
            if self.precision == "fp16" and self.device.type == "cuda"
            else None
        )
        # compiled training also compiles AdamW + both EMAs into one pass per parameter (not with a GradScaler,
        # which may skip optimiser steps; `compiled` is already False under FSDP2)
        fuse_ema = compiled and self.scaler is None
        self.opt = make_optimizer(self.raw, tc, self.lr, self.device, ema=self.ema if fuse_ema else None)
        self.step = 0
        self.eval_den: nn.Module | None = None
        self._last_save = self._last_plot = time.perf_counter()

        # run folder + resume
        self.ckpt_loaded = None
        resume_path: Path | None = None
        if self.resume == "auto":
            resume_path = find_resume_run(tc.out)
            if resume_path is None and self.main:
                print(f"[jitkit] --resume auto: no checkpoint under {tc.out}; starting a fresh run")
        elif self.resume:
            resume_path = Path(self.resume)
        if resume_path is not None:
            ck = load_checkpoint(resume_path)
            self.load_state(ck)
            root = ck.path.parent.parent if ck.path.parent.name == "checkpoints" else ck.path.parent
            self.run_dir = Path(self.run_dir_arg) if self.run_dir_arg else root
            self.ckpt_loaded = ck.path
        else:
            out = Path(self.run_dir_arg) if self.run_dir_arg else fresh_run_dir(tc.out)
            self.run_dir = dist.broadcast_object(str(out)) if self.info.enabled else out
            self.run_dir = Path(self.run_dir)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "samples").mkdir(exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1) + "\n")
            atomic_write_text(self.run_dir / "classes.json", json.dumps(self.classes, indent=1) + "\n")
        dist.barrier()
        self.batches = _Batches(ds, self.device, cfg.data.workers, self.info.world_size)
        self.log_path = self.run_dir / "log.jsonl"
        self.tb = None
        if self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            except Exception:
                self.tb = None
            if self.step > 0:
                self._truncate_log(self.step)

    def load_state(self, ck) -> None:
        check_state_dict(self.raw, ck.model, ck.config.model, self.cfg.model)
        dist.load_model_state(self.raw, ck.model)
        for which, sd in (("1", ck.ema1), ("2", ck.ema2)):
            self.ema.load_averaged(which, sd if sd is not None else ck.model)
        st = ck.state or {}
        if "optimizer" in st:
            # the saved param groups carry the saving run's implementation flags (fused/foreach); this run keeps
            # its own (a checkpoint of a CUDA fused run resumes on a CPU with --no-compile, and vice versa)
            impl = [{k: g.get(k) for k in ("fused", "foreach")} for g in self.opt.param_groups]
            dist.load_optimizer_state(
                self.fwd, self.opt, st["optimizer"], self.cfg.train.fsdp and self.info.enabled
            )
            for g, flags in zip(self.opt.param_groups, impl):
                g.update(flags)
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step = int(st.get("step", ck.meta.get("step", 0)))
        old_G = int(st.get("effective_batch", self.plan.effective_batch))
        if old_G != self.plan.effective_batch:
            # keep the epoch position in images; the rest of this epoch uses the new batch
            ep, s_in = divmod(self.step, max(1, self.n_data // old_G))
            self.step = ep * self.steps_per_epoch + math.ceil(s_in * old_G / self.plan.effective_batch)
            if self.main:
                print(
                    f"[jitkit] effective batch changed from {old_G} to {self.plan.effective_batch}: "
                    f"continuing at step {self.step} (epoch {ep})"
                )
        self.ema.num_updates = self.step
        if self.main:
            print(
                f"[jitkit] resumed from {ck.path} at step {self.step} (epoch {self.step // self.steps_per_epoch})"
            )

    def _truncate_log(self, step: int) -> None:
        """Drop log records after ``step`` (written after the checkpoint we resume from)."""
        rows = read_log(self.log_path)
        keep = [r for r in rows if r.get("step", 0) <= step]
        if len(keep) != len(rows):
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in keep))

    # checkpoints / samples -----------------------------------------------------------------------------------
    def _states(self) -> tuple[dict, dict, dict, dict]:
        model_sd = dist.full_tensors(self.raw.state_dict())
        e1 = dist.full_tensors(self.ema.averaged_state_dict(self.raw, 1))
        e2 = dist.full_tensors(self.ema.averaged_state_dict(self.raw, 2))
        if self.cfg.train.fsdp and self.info.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt_sd = get_optimizer_state_dict(
                self.fwd, self.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            opt_sd = self.opt.state_dict()
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "step_in_epoch": self.step % self.steps_per_epoch,
            "images_seen": self.step * self.plan.effective_batch,
            "effective_batch": self.plan.effective_batch,
            "world_size": self.info.world_size,
            "optimizer": opt_sd,
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng,
        }
        return model_sd, e1, e2, state

    def save(self, reason: str) -> Path | None:
        model_sd, e1, e2, state = self._states()
        path = None
        if self.main:
            meta = {
                "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "reason": reason,
                "effective_batch": self.plan.effective_batch,
                "lr": self.lr,
                "world_size": self.info.world_size,
            }
            root = self.run_dir / "checkpoints"
            path = save_checkpoint(
                root / "last",
                config=self.cfg,
                classes=self.classes,
                model=model_sd,
                ema1=e1,
                ema2=e2,
                state=state,
                meta=meta,
            )
            if self.cfg.train.keep_ckpts > 0:
                link_checkpoint(path, root / step_dir_name(self.step))
                prune_checkpoints(root, self.cfg.train.keep_ckpts)
            now = time.perf_counter()
            if reason != "epoch" or now - self._last_plot >= 60.0:
                plot_loss(self.log_path, self.run_dir / "loss.png")
                self._last_plot = now
        self._last_save = time.perf_counter()
        dist.barrier()
        return path

    def eval_denoiser(self) -> nn.Module:
        """A Denoiser on this device holding the current EMA1 weights, in eval mode."""
        from jitkit.diffusion.flow import Denoiser
        from jitkit.models.registry import build_model

        if self.eval_den is None:
            self.eval_den = Denoiser(
                build_model(self.cfg.model), self.cfg.diffusion, self.cfg.model.num_classes
            )
            self.eval_den.to(self.device)
        sd = dist.full_tensors(self.ema.averaged_state_dict(self.raw, 1))
        self.eval_den.load_state_dict(sd)
        return self.eval_den.eval()

    @torch.no_grad()
    def write_samples(self) -> Path | None:
        """samples/step-NNNNNN.png: EMA1, 8 images per class (≤ 16 classes shown), one row per class.

        The images are those of ``jitkit sample RUN --per-class 8 --seed <train.seed>`` (per-image seeds).
        """
        from jitkit.diffusion.generate import generate_images
        from jitkit.images import save_grid

        den = self.eval_denoiser()
        if not self.main:
            return None
        C = self.cfg.model.num_classes
        shown = list(range(C)) if C <= 16 else [round(i * (C - 1) / 15) for i in range(16)]
        y = [c for c in shown for _ in range(8)]
        images = generate_images(
            den, y, self.cfg.sampler, seed=self.cfg.train.seed, batch_size=16, precision=self.precision
        )
        path = self.run_dir / "samples" / f"{step_dir_name(self.step)}.png"
        return save_grid(images, y, path, self.classes)

    def emit(self, event: str, epoch: int, **extra: Any) -> None:
        if not self.callbacks or not self.main:
            return
        info = _LazyInfo(
            self.eval_denoiser,
            step=self.step,
            epoch=epoch,
            run_dir=self.run_dir,
            config=self.cfg,
            classes=self.classes,
            device=self.device,
            **extra,
        )
        for cb in self.callbacks:
            cb(event, info)

    # the loop ------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        self.setup()
        sig = _SignalFlag()
        sig.install()
        try:
            return self._loop(sig)
        finally:
            sig.restore()
            if self.tb is not None:
                self.tb.close()
            if self.main and self.progress and getattr(self, "bar", None) is not None:
                self.bar.close()

    def _describe(self) -> None:
        if not self.main:
            return
        p, tc = self.plan, self.cfg.train
        from jitkit.models.registry import count_params

        n = count_params(self.raw.net)
        print(
            f"[jitkit] {self.cfg.model.name} ({n / 1e6:.2f} M params) on {self.device} ({self.precision}), "
            f"world size {p.world_size}\n"
            f"[jitkit] data: {self.n_data:,} images, {len(self.classes)} classes; effective batch "
            f"{p.effective_batch} = micro {p.micro_batch} × accum {p.accum_steps} × world {p.world_size}; "
            f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps ({self.total_epochs:g} epochs)\n"
            f"[jitkit] lr {self.lr:.3g}"
            + (f" = blr {tc.blr:g} × {p.effective_batch} / 256" if tc.lr <= 0 else "")
            + f", {tc.schedule} after {tc.warmup_epochs:g} warm-up epochs; EMA {tc.ema_decay1} / {tc.ema_decay2}\n"
            f"[jitkit] run folder: {self.run_dir}",
            flush=True,
        )

    def _loop(self, sig: _SignalFlag) -> Path:
        cfg, tc, plan = self.cfg, self.cfg.train, self.plan
        self._describe()
        G = plan.effective_batch
        hflip = bool(cfg.data.hflip)
        bar = None
        if self.main and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stdout
            )
        self.bar = bar
        log_f = open(self.log_path, "a") if self.main else None  # noqa: SIM115
        smooth = None
        win_loss, win_n, win_t0, win_steps = 0.0, 0, time.perf_counter(), 0
        t_start = time.perf_counter()
        last_saved = self.step
        stop_reason = None
        try:
            while self.step < self.total_steps and stop_reason is None:
                epoch = self.step // self.steps_per_epoch
                start_in_epoch = self.step % self.steps_per_epoch
                end_in_epoch = min(self.steps_per_epoch, start_in_epoch + (self.total_steps - self.step))
                perm = epoch_permutation(self.n_data, tc.seed, epoch)
                chunks = list(rank_chunk_indices(perm, plan, self.info.rank, start_in_epoch, end_in_epoch))
                it = self.batches.epoch(chunks)
                ci = 0
                for _s in range(start_in_epoch, end_in_epoch):
                    lr = lr_at(
                        self.step / self.steps_per_epoch,
                        self.lr,
                        warmup_epochs=tc.warmup_epochs,
                        epochs=self.total_epochs,
                        schedule=tc.schedule,
                        min_lr=tc.min_lr,
                    )
                    set_lr(self.opt, lr)
                    self.opt.zero_grad(set_to_none=True)
                    micro = []
                    for _a in range(plan.accum_steps):
                        _, c, _ = chunks[ci]
                        ci += 1
                        x_u8, y = next(it)
                        seed = chunk_seed(tc.seed, self.step, c)
                        gen = torch.Generator(device=self.device).manual_seed(seed)
                        x = to_model_range(x_u8)
                        if hflip:
                            x = random_hflip(x, generator=gen)
                        micro.append((x, y, gen, seed))
                    loss_sum = (
                        accumulate_gradients(
                            self.fwd, micro, device=self.device, precision=self.precision, scaler=self.scaler
                        )
                        * plan.accum_steps
                    )
                    # one collective per step: mean loss, non-finite flag, stop flag
                    stop_flag = 1.0 if sig.signum is not None else 0.0
                    packed = torch.stack(
                        [loss_sum / plan.accum_steps, torch.tensor(stop_flag, device=self.device)]
                    )
                    if self.info.enabled:
                        torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.SUM)
                        packed = packed / torch.tensor([self.info.world_size, 1.0], device=self.device)
                    step_loss = float(packed[0].item())
                    if not math.isfinite(step_loss):
                        last = latest_checkpoint(self.run_dir)
                        raise NonFiniteLossError(
                            f"the loss became {step_loss} at step {self.step + 1} (epoch {epoch}, lr {lr:.3g}); "
                            f"the step was not applied. Last good checkpoint: {last or 'none yet'}. Try a lower "
                            f"--set train.blr, --set train.grad_clip=1.0 or precision fp32, then --resume auto"
                        )
                    grad_norm = None
                    if tc.grad_clip > 0:
                        if self.scaler is not None:
                            self.scaler.unscale_(self.opt)
                        grad_norm = float(nn.utils.clip_grad_norm_(self.fwd.parameters(), tc.grad_clip))
                    if self.scaler is not None:
                        self.scaler.step(self.opt)
                        self.scaler.update()
                    else:
                        self.opt.step()
                    if not getattr(self.opt, "updates_ema", False):
                        self.ema.update(self.raw)
                    self.step += 1

                    # logging
                    smooth = step_loss if smooth is None else 0.95 * smooth + 0.05 * step_loss
                    win_loss += step_loss
                    win_n += 1
                    win_steps += 1
                    if self.main and (self.step % tc.log_every == 0 or self.step == self.total_steps):
                        dt = time.perf_counter() - win_t0
                        ips = win_steps * G / max(dt, 1e-9)
                        rec = {
                            "step": self.step,
                            "epoch": round(self.step / self.steps_per_epoch, 4),
                            "loss": win_loss / win_n,
                            "lr": lr,
                            "img_per_s": round(ips, 2),
                            "time": round(time.perf_counter() - t_start, 3),
                        }
                        if grad_norm is not None:
                            rec["grad_norm"] = grad_norm
                        log_f.write(json.dumps(rec) + "\n")
                        log_f.flush()
                        if self.tb is not None:
                            self.tb.add_scalar("train/loss", rec["loss"], self.step)
                            self.tb.add_scalar("train/lr", lr, self.step)
                            self.tb.add_scalar("train/img_per_s", ips, self.step)
                        if bar is not None:
                            bar.set_postfix_str(
                                f"ep {epoch} loss {smooth:.4f} {ips:.0f} img/s lr {lr:.2e}", refresh=False
                            )
                        win_loss, win_n, win_t0, win_steps = 0.0, 0, time.perf_counter(), 0
                    if bar is not None:
                        bar.update(1)
                    if (
                        tc.sample_every > 0
                        and self.step % tc.sample_every == 0
                        and self.step < self.total_steps
                    ):
                        self.write_samples()
                    if tc.ckpt_every > 0 and self.step % tc.ckpt_every == 0 and self.step < self.total_steps:
                        self.save("periodic")
                        last_saved = self.step
                    try:
                        self.emit("step", epoch, loss=step_loss, lr=lr)
                    except StopTraining as e:
                        stop_reason = f"stopped by a callback: {e}" if str(e) else "stopped by a callback"
                    if packed[1].item() > 0:
                        name = signal.Signals(sig.signum).name if sig.signum else "a signal on another rank"
                        stop_reason = f"interrupted by {name}"
                    if stop_reason is not None:
                        break
                else:
                    # epoch finished
                    ep_done = self.step // self.steps_per_epoch
                    due = time.perf_counter() - self._last_save >= tc.ckpt_min_seconds
                    if (
                        tc.ckpt_every <= 0
                        and self.step < self.total_steps
                        and self.step != last_saved
                        and due
                    ):
                        self.save("epoch")
                        last_saved = self.step
                    try:
                        self.emit("epoch_end", ep_done - 1)
                    except StopTraining as e:
                        stop_reason = f"stopped by a callback: {e}" if str(e) else "stopped by a callback"
        finally:
            if log_f is not None:
                log_f.close()
            if bar is not None:
                bar.close()
                self.bar = None
        if self.step != last_saved or stop_reason is None:
            self.save("end" if stop_reason is None else "interrupted")
        if stop_reason is not None:
            if self.main:
                print(
                    f"[jitkit] {stop_reason} at step {self.step}; checkpoint saved. Continue with --resume auto"
                )
            dist.barrier()
            return self.run_dir
        if self.main:
            grid = self.write_samples()
            el = time.perf_counter() - t_start
            print(f"[jitkit] finished {self.step} steps in {el:.1f} s; samples: {grid}; run: {self.run_dir}")
        else:
            self.write_samples()
        self.emit("end", self.step // self.steps_per_epoch)
        dist.barrier()
        return self.run_dir
