"""The training engine: one loop for a 2-core laptop, a Mac, one GPU or a torchrun job.

Per optimiser step (:meth:`Trainer.train_step`; effective batch G = m · k · W: micro-batch m, accumulation k,
world size W):

    lr  = lr_at(step / steps_per_epoch)                         (warm-up, then constant or cosine)
    for a in 0 … k−1:                                           (no gradient all-reduce before a = k−1)
        chunk c = a·W + rank:  images perm_epoch[step·G + c·m : step·G + (c+1)·m]
        loss_a = Denoiser.loss(x_c, y_c; generator seeded by (seed, step, c));  backward(loss_a / k)
    clip ‖g‖ (optional); AdamW step; EMA_i ← d_i·EMA_i + (1 − d_i)·θ  (i = 1, 2)

Determinism: the data order is a permutation drawn from (seed, epoch), and every random draw of a chunk
(label drop, t, noise, flips, dropout) comes from a generator seeded by (seed, step, chunk) (``batching``). A
run therefore depends only on its config: an interrupted-then-resumed run repeats the uninterrupted one, and W
processes with micro-batch m reproduce one process with micro-batch m and k·W accumulation steps.

Around the step: ``batching`` (data order, chunks), ``optim`` (AdamW), ``ema``, ``schedule`` (LR),
``run_folder`` (folders, the resume resolution, log files), ``state`` (checkpoints), ``report`` (log records,
progress, previews), ``signals`` (Ctrl-C) and ``callbacks`` (the contract of ``train(callbacks=...)``).

Shape key: B micro-batch, C channels, S image side; images [B, C, S, S] uint8 on the host, float on the
device.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jitkit.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, step_dir_name
from jitkit.checkpoint.hub import is_hub_spec
from jitkit.checkpoint.load import checkpoint_meta
from jitkit.config import RunConfig
from jitkit.diffusion.generate import cast_for_inference
from jitkit.runtime import autocast, dist, needs_grad_scaler, resolve_device, resolve_precision
from jitkit.train.batching import (
    Batches,
    MicroBatch,
    batch_plan,
    chunk_seed,
    micro_batch,
    training_data,
)
from jitkit.train.callbacks import Callback, CallbackInfo, StopTraining
from jitkit.train.ema import EMA
from jitkit.train.optim import make_optimizer
from jitkit.train.report import Reporter, write_preview
from jitkit.train.run_folder import (
    fresh_run_dir,
    plot_loss,
    prepare_run_dir,
    resolve_resume,
    restart_run,
    run_dir_of,
    truncate_log,
)
from jitkit.train.schedule import lr_schedule, scaled_lr, set_lr
from jitkit.train.signals import SignalFlag
from jitkit.train.state import TrainState, resumed_step, run_position, write_checkpoint
from jitkit.train.tracking import require_sinks

__all__ = ["NonFiniteLossError", "StepResult", "StopTraining", "Trainer", "accumulate_gradients", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the step was not applied and earlier checkpoints are intact."""


@dataclass(frozen=True)
class StepResult:
    """One optimiser step as every rank sees it (the flags come from one all-reduce, so ranks agree)."""

    loss: float  # the step's mean loss over all ranks
    lr: float
    grad_norm: float | None  # before clipping; None without clipping
    stop: bool  # some rank received SIGINT/SIGTERM during the step
    save_due: bool  # the step ends an epoch and rank 0's clock says an epoch checkpoint is due


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[MicroBatch],
    *,
    device: torch.device,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Forward and backward over k micro-batches (x, y, generator, seed): backward(loss_a / k) each, so the
    gradients add up to those of the mean loss over the k·m images; the gradient all-reduce (DDP/FSDP) runs
    only on the last one. ``seed`` (if not None) re-seeds the global generator first (dropout).
    Returns the mean of the k micro-batch losses (detached, float32)."""
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


def train(
    cfg: RunConfig,
    *,
    resume: str | Path | None = None,
    callbacks: list[Callback] | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
    signals: SignalFlag | None = None,
) -> Path:
    """Train a JiT as described by ``cfg`` and return the run folder.

    ``resume``: None (fresh run in ``cfg.train.out``, or the next free ``OUT-N`` if it is taken), ``"auto"``
    (continue the latest run under OUT; a run that stopped before its first checkpoint starts again in its
    folder; fresh if there is none) or a path (run folder, checkpoint folder or a file in one; it must load).
    ``callbacks``: ``cb(event, info)``, see :mod:`jitkit.train.callbacks`. ``run_dir``: write to this folder
    instead of the one chosen from OUT (every rank must pass the same). ``signals``: the SIGINT/SIGTERM
    handler to install during the run (default: a new one); a first signal saves a checkpoint and returns
    normally, so pass your own to tell afterwards whether one stopped the run (``signals.signum``).
    """
    return Trainer(
        cfg, resume=resume, callbacks=callbacks or [], progress=progress, run_dir=run_dir, signals=signals
    ).run()


class Trainer:
    """One training run: :meth:`setup` (runtime, data, model, optimiser, run folder), then :meth:`run`."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        resume: str | Path | None,
        callbacks: list[Callback],
        progress: bool,
        run_dir: str | Path | None,
        signals: SignalFlag | None = None,
    ) -> None:
        self.cfg, self.resume, self.callbacks, self.progress = cfg, resume, callbacks, progress
        self.run_dir_arg = run_dir
        self.sig = signals if signals is not None else SignalFlag()
        self.eval_den: nn.Module | None = None
        self.report: Reporter | None = None

    # setup -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_runtime()
        self._setup_data()
        compiled = self._setup_model()
        self._setup_optimizer(fuse_ema=compiled and self.scaler is None)
        self._setup_run_folder()

    def _setup_runtime(self) -> None:
        tc = self.cfg.train
        require_sinks(tc.log_sinks)  # a missing wandb is said before any work
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        self.info = dist.init(resolve_device(tc.device), timeout_s=tc.dist_timeout)
        self.device, self.main = self.info.device, self.info.is_main
        self.plan = batch_plan(tc, self.info.world_size)
        self.resume_ckpt, self.resume_note = resolve_resume(self.resume, tc.out)
        # resume="auto" with no checkpoint anywhere: a run stopped before its first save starts again in place
        self.restart_dir = restart_run(self.resume, tc.out) if self.resume_ckpt is None else None
        if tc.precision == "auto":  # before the precision probe allocates: the lower (bf16) estimate
            self._check_memory("auto")
        self.precision, self.precision_record = self._choose_precision()
        self._check_memory(self.precision)

    def _check_memory(self, precision: str) -> None:
        """Refuse a micro-batch whose estimated peak does not fit (:func:`jitkit.train.memory_guard.check_run`)."""
        from jitkit.train.memory_guard import check_run

        note = check_run(self.cfg, self.plan, precision, self.device, self.info.world_size, main=self.main)
        if note and self.main:
            print(f"[jitkit] memory: {note}", flush=True)

    def _choose_precision(self) -> tuple[str, dict]:
        """The training precision: an explicit one checked for the device; ``auto`` as the run being resumed
        chose it, else decided for this model and micro-batch (measured on a CPU, see
        :func:`jitkit.models.registry.precision_for_model`), by rank 0 for every rank."""
        from jitkit.models.registry import precision_for_model

        tc = self.cfg.train
        if tc.precision == "auto" and self.resume_ckpt is not None:
            chosen = checkpoint_meta(self.resume_ckpt).get("precision")
            if chosen in ("fp32", "bf16", "fp16"):
                return resolve_precision(chosen, self.device), {
                    "requested": "auto",
                    "reason": "the resumed run's",
                }
        choice = precision_for_model(
            tc.precision, self.device, self.cfg.model, self.plan.micro_batch, train=True
        )
        return dist.broadcast_object(choice)  # ranks measure differently; rank 0's decision holds

    def _setup_data(self) -> None:
        tc, G = self.cfg.train, self.plan.effective_batch
        ds, self.classes = training_data(self.cfg, self.plan)
        self.n_data = len(ds)
        self.steps_per_epoch = self.n_data // G
        self.total_steps = tc.max_steps if tc.max_steps > 0 else tc.epochs * self.steps_per_epoch
        self.total_epochs = self.total_steps / self.steps_per_epoch
        self.lr = tc.lr if tc.lr > 0 else scaled_lr(tc.blr, G)
        self.lr_schedule = lr_schedule(tc, self.lr, self.total_epochs)  # fractional epoch → learning rate
        self.hflip = bool(self.cfg.data.hflip)
        self.batches = Batches(
            ds,
            self.plan,
            rank=self.info.rank,
            seed=tc.seed,
            device=self.device,
            data_workers=self.cfg.data.workers,
        )

    def _setup_model(self) -> bool:
        """The Denoiser, its DDP/FSDP wrapper, the EMAs and the fp16 scaler; True if the blocks compiled."""
        from jitkit.diffusion.flow import Denoiser
        from jitkit.models.registry import build_model

        tc = self.cfg.train
        torch.manual_seed(tc.seed)
        self.raw = Denoiser(build_model(self.cfg.model), self.cfg.diffusion, self.cfg.model.num_classes)
        self.raw.to(self.device).train()
        compiled = bool(tc.compile) and self._compile_blocks()
        self.sharded = bool(tc.fsdp) and self.info.enabled
        self.fwd = dist.wrap_model(self.raw, self.info, fsdp=tc.fsdp, precision=self.precision)
        self.ema = EMA(self.raw, (tc.ema_decay1, tc.ema_decay2), warmup=tc.ema_warmup)
        scale = needs_grad_scaler(self.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if scale else None
        return compiled

    def _compile_blocks(self) -> bool:
        from jitkit.models.registry import compiler_available

        ok, why = compiler_available(self.device)
        if ok and self.cfg.train.fsdp and self.info.enabled:
            ok, why = False, "compiled blocks under FSDP2 are not tested by jitkit yet"
        if ok:
            # in place: the state dict keeps its keys
            self.raw.net.compile_blocks(whole=self.cfg.train.compile_scope == "model")
        elif self.main:
            print(f"[jitkit] compile=True ignored: {why}; training eagerly", flush=True)
        return ok

    def _setup_optimizer(self, fuse_ema: bool) -> None:
        """AdamW; compiled training also runs both EMA updates in the optimiser's pass over each parameter
        (not with a GradScaler, which may skip steps; never under FSDP2, whose blocks are not compiled)."""
        tc = self.cfg.train
        self.opt = make_optimizer(
            self.raw,
            lr=self.lr,
            betas=(tc.beta1, tc.beta2),
            weight_decay=tc.weight_decay,
            impl="fused-ema" if fuse_ema else "fused",
            ema=self.ema if fuse_ema else None,
        )
        self.state = TrainState(self.raw, self.fwd, self.opt, self.ema, self.scaler, self.sharded)

    def _setup_run_folder(self) -> None:
        """A fresh run folder, or the resumed run's with its state loaded; config.json and classes.json."""
        self.step = 0
        self._last_save = self._last_plot = time.perf_counter()
        ckpt, note, restart = self.resume_ckpt, self.resume_note, self.restart_dir
        if restart is not None:
            note = f"{restart} has no checkpoint yet (it stopped before its first save); starting it again"
        if note and self.main:
            print(f"[jitkit] resume='auto': {note}")
        if ckpt is not None:
            self.load_state(load_checkpoint(ckpt, lazy=True))  # each tensor read when it is copied in
            if self.run_dir_arg or not is_hub_spec(self.resume):
                self.run_dir = Path(self.run_dir_arg) if self.run_dir_arg else run_dir_of(ckpt)
            else:  # never train into the Hub's download cache: continue in a new local run under OUT
                self.run_dir = Path(dist.broadcast_object(str(fresh_run_dir(self.cfg.train.out))))
        else:
            out = Path(self.run_dir_arg or restart or fresh_run_dir(self.cfg.train.out))
            self.run_dir = Path(dist.broadcast_object(str(out)))  # rank 0 chose OUT or OUT-N
        self._last_saved = self.step
        self.log_path = self.run_dir / "log.jsonl"
        if self.main:
            prepare_run_dir(self.run_dir, self.cfg, self.classes)
            if self.step > 0 or restart is not None:
                truncate_log(self.log_path, self.step)
        dist.barrier()

    # checkpoints and previews ------------------------------------------------------------------------------
    def load_state(self, ck: Checkpoint) -> None:
        """Continue from ``ck``: weights, EMAs, optimiser and scaler state, and the step."""
        st = self.state.restore(ck, self.cfg.model)
        G, old_G = self.plan.effective_batch, int(st.get("effective_batch", self.plan.effective_batch))
        self.step = resumed_step(int(st.get("step", ck.meta.get("step", 0))), old_G, G, self.n_data)
        self.ema.num_updates = self.step
        if self.main:
            epoch = self.step // self.steps_per_epoch
            if old_G != G:  # the epoch position is kept in images; the rest of this epoch uses the new batch
                print(
                    f"[jitkit] effective batch changed from {old_G} to {G}: continuing at step {self.step} "
                    f"(epoch {epoch})"
                )
            print(f"[jitkit] resumed from {ck.path} at step {self.step} (epoch {epoch})")

    def save(self, reason: str) -> Path | None:
        """A checkpoint (and loss.png) of the current step; every rank calls it, rank 0 writes."""
        weights, optimizer = self.state.gather()  # collectives under FSDP2
        path = None
        if self.main:
            path = write_checkpoint(
                self.run_dir,
                config=self.cfg,
                classes=self.classes,
                weights=weights,
                position=run_position(
                    self.step, self.steps_per_epoch, self.plan.effective_batch, self.info.world_size
                ),
                optimizer=optimizer,
                scaler=self.scaler,
                device=self.device,
                lr=self.lr,
                reason=reason,
                keep=self.cfg.train.keep_ckpts,
                precision={"precision": self.precision, "record": self.precision_record},
            )
            now = time.perf_counter()
            if reason != "epoch" or now - self._last_plot >= 60.0:
                plot_loss(self.log_path, self.run_dir / "loss.png")
                self._last_plot = now
        self._last_save = time.perf_counter()
        self._last_saved = self.step
        dist.barrier()
        return path

    def eval_denoiser(self) -> nn.Module:
        """A Denoiser on this device with the current EMA1 weights, eval mode.

        A collective under FSDP2 (the EMA shards are gathered): every rank must call it. There the replica
        exists only for the event that asked for it (:meth:`_release_eval_denoiser`).
        """
        from jitkit.diffusion.flow import Denoiser
        from jitkit.models.registry import build_model

        if self.eval_den is None:
            self.eval_den = Denoiser(
                build_model(self.cfg.model), self.cfg.diffusion, self.cfg.model.num_classes
            )
            self.eval_den.to(self.device)
            cast_for_inference(self.eval_den, self.precision)  # samples in the training precision
        # one tensor at a time: under FSDP2 each EMA shard is gathered and copied before the next
        dist.load_model_state(self.eval_den, dist.FullTensors(self.ema.averaged_state_dict(self.raw, 1)))
        return self.eval_den.eval()

    def _release_eval_denoiser(self) -> None:
        """Under FSDP2 the full replica of the evaluation goes as soon as its event is over."""
        if self.sharded:
            self.eval_den = None

    @torch.no_grad()
    def write_samples(self) -> Path | None:
        """samples/step-NNNNNN.png from the EMA1 weights (see :func:`jitkit.train.report.write_preview`); every
        rank calls it, rank 0 draws and writes."""
        den = self.eval_denoiser()
        path = None
        if self.main:
            path = self.run_dir / "samples" / f"{step_dir_name(self.step)}.png"
            write_preview(den, self.cfg, self.classes, path, self.precision)
            if self.report is not None:
                self.report.image(self.step, "samples/preview", path)
        self._release_eval_denoiser()
        dist.barrier()
        return path

    def _denoiser_factory(self, event: str) -> Any:
        """How a callback's ``info["denoiser"]`` is made. Lazily where building it involves no collective; under
        FSDP2 eagerly on every rank for "epoch_end" and "end" (a lazy gather asked for on some ranks only
        would hang the others), and not at all for "step" (a gather every step would cost too much)."""
        if not self.sharded:
            return self.eval_denoiser
        if event == "step":

            def refuse() -> nn.Module:
                raise RuntimeError(
                    'info["denoiser"] is not available at "step" events under FSDP (it is a gather of the '
                    'sharded EMA on every rank); use it at "epoch_end" or "end"'
                )

            return refuse
        den = self.eval_denoiser()
        return lambda: den

    def _run_info(self) -> dict[str, Any]:
        """What every callback event tells about the run (see :mod:`jitkit.train.callbacks`)."""
        keys = ("run_dir", "config", "classes", "device", "precision", "rank", "world_size", "is_main")
        values = (self.run_dir, self.cfg, self.classes, self.device, self.precision, self.info.rank)
        return dict(zip(keys, (*values, self.info.world_size, self.main)))

    def emit(self, event: str, epoch: int, **extra: Any) -> str | None:
        """Call every callback with ``(event, info)`` on every rank (see :mod:`jitkit.train.callbacks`).

        Returns why the run stops when a callback raised StopTraining on any rank (shared by all ranks through
        one all-reduce), else None.
        """
        if not self.callbacks:
            return None
        info = CallbackInfo(
            self._denoiser_factory(event), step=self.step, epoch=epoch, **self._run_info(), **extra
        )
        stop = None
        try:
            for cb in self.callbacks:
                out = cb(event, info)
                # an evaluation hook returns its record (the eval.jsonl line) on rank 0: to the sinks too
                if self.main and self.report is not None and isinstance(out, dict) and "metric" in out:
                    self.report.evaluation(self.step, out)
        except StopTraining as e:
            stop = f"stopped by a callback: {e}" if str(e) else "stopped by a callback"
        finally:
            self._release_eval_denoiser()
        if dist.any_rank(stop is not None) and stop is None:
            stop = "stopped by a callback on another rank"
        return stop

    # the run -----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Set up, train to ``total_steps`` (or until stopped), save; return the run folder."""
        self.setup()
        self.sig.install()
        try:
            self._describe()
            # the sinks stay open for the final grid and evaluations; closed on every way out
            with self._reporter() as self.report:
                stop = self._loop()
                self.report.end_progress()
                return self._finish(stop)
        finally:
            self.sig.restore()

    def _reporter(self) -> Reporter:
        return Reporter(
            self.log_path,
            main=self.main,
            progress=self.progress,
            total_steps=self.total_steps,
            step=self.step,
            steps_per_epoch=self.steps_per_epoch,
            effective_batch=self.plan.effective_batch,
            log_every=self.cfg.train.log_every,
            sinks=self.cfg.train.log_sinks,
            run_dir=self.run_dir,
            config=self.cfg.to_dict(),
        )

    def train_step(self, batches: Iterator[tuple[int, torch.Tensor, torch.Tensor]]) -> StepResult:
        """One optimiser step on the next k chunks of ``batches`` (see the module docstring)."""
        tc, k, W = self.cfg.train, self.plan.accum_steps, self.plan.world_size
        epoch_f = self.step / self.steps_per_epoch
        lr = self.lr_schedule(epoch_f)
        set_lr(self.opt, lr)
        self.opt.zero_grad(set_to_none=True)
        micro = [
            micro_batch(x, y, chunk_seed(tc.seed, self.step, c), hflip=self.hflip, device=self.device)
            for c, x, y in itertools.islice(batches, k)
        ]
        loss = accumulate_gradients(
            self.fwd, micro, device=self.device, precision=self.precision, scaler=self.scaler
        )
        # one collective per step, every decision that leads into another collective folded in: [loss, stop
        # request, epoch checkpoint due by rank 0's clock] summed over ranks → [mean loss, ranks stopping, due]
        flags = torch.tensor([float(self.sig.requested), float(self._epoch_save_due())], device=loss.device)
        packed = dist.all_reduce_sum(torch.cat([loss.reshape(1), flags]))  # [3]
        step_loss = float((packed[0] / W).item())
        if not math.isfinite(step_loss):
            raise NonFiniteLossError(
                f"the loss became {step_loss} at step {self.step + 1} (epoch {int(epoch_f)}, lr {lr:.3g}); "
                f"the step was not applied. Last good checkpoint: "
                f"{latest_checkpoint(self.run_dir) or 'none yet'}. "
                f"Try a lower train.blr, train.grad_clip=1.0 or train.precision=fp32, then resume='auto'"
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
        if not getattr(self.opt, "updates_ema", False):  # AdamWEMA updates the EMAs in its step
            self.ema.update(self.raw)
        self.step += 1
        return StepResult(step_loss, lr, grad_norm, bool(packed[1] > 0), bool(packed[2] > 0))

    def _epoch_save_due(self) -> bool:
        """Rank 0's view: the step under way ends an epoch, checkpoints go per epoch (``ckpt_every`` 0) and
        ``ckpt_min_seconds`` have passed since the last save. Shared through the step's all-reduce, so every
        rank saves, or none (a rank's own clock never decides a collective)."""
        tc = self.cfg.train
        ends_epoch = (self.step + 1) % self.steps_per_epoch == 0 and self.step + 1 < self.total_steps
        if not (self.main and ends_epoch and tc.ckpt_every <= 0):
            return False
        return time.perf_counter() - self._last_save >= tc.ckpt_min_seconds

    def _loop(self) -> str | None:
        """Epochs → steps → train_step → log, preview, checkpoint, callbacks. Returns why the run stopped
        before ``total_steps`` (a signal or a callback), or None."""
        tc, spe, stop = self.cfg.train, self.steps_per_epoch, None
        while self.step < self.total_steps and stop is None:
            epoch, start = divmod(self.step, spe)
            end = min(spe, start + (self.total_steps - self.step))
            batches = self.batches.epoch(epoch, start, end)
            for _ in range(start, end):
                r = self.train_step(batches)
                self.report.step(self.step, epoch, r.loss, r.lr, r.grad_norm)
                before_end = self.step < self.total_steps
                if tc.sample_every > 0 and self.step % tc.sample_every == 0 and before_end:
                    self.write_samples()
                if tc.ckpt_every > 0 and self.step % tc.ckpt_every == 0 and before_end:
                    self.save("periodic")
                stop = self.emit("step", epoch, loss=r.loss, lr=r.lr)
                if r.stop:
                    stop = f"interrupted by {self.sig.name}"
                if stop is not None:
                    break
            else:  # the epoch's steps are done: a checkpoint per epoch when not every N steps
                if r.save_due and self.step != self._last_saved:
                    self.save("epoch")
                stop = self.emit("epoch_end", self.step // spe - 1)
        return stop

    def _finish(self, stop: str | None) -> Path:
        """The last checkpoint; unless stopped early, the final sample grid and the "end" callbacks."""
        if self.step != self._last_saved or stop is None:
            self.save("end" if stop is None else "interrupted")
        if stop is not None:
            if self.main:
                print(
                    f"[jitkit] {stop} at step {self.step}; checkpoint saved. Continue with resume='auto' (jitkit train --resume auto)"
                )
            dist.barrier()
            return self.run_dir
        grid = self.write_samples()
        if self.main:
            print(
                f"[jitkit] finished {self.step} steps in {self.report.elapsed():.1f} s; samples: {grid}; "
                f"run: {self.run_dir}"
            )
        self.emit("end", self.step // self.steps_per_epoch)  # a StopTraining now has nothing left to stop
        dist.barrier()
        return self.run_dir

    def _describe(self) -> None:
        if not self.main:
            return
        from jitkit.models.registry import count_params

        p, tc = self.plan, self.cfg.train
        n = count_params(self.raw.net)
        lr_rule = f" = blr {tc.blr:g} × {p.effective_batch} / 256" if tc.lr <= 0 else ""
        print(
            f"[jitkit] {self.cfg.model.name} ({n / 1e6:.2f} M params) on {self.device} ({self.precision}"
            f"{_why(self.precision_record)}), world size {p.world_size}\n"
            f"[jitkit] data: {self.n_data:,} images, {len(self.classes)} classes; effective batch "
            f"{p.effective_batch} = micro {p.micro_batch} × accum {p.accum_steps} × world {p.world_size}; "
            f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps ({self.total_epochs:g} epochs); "
            f"images {self.batches.reason}\n"
            f"[jitkit] lr {self.lr:.3g}{lr_rule}, {tc.schedule} after {tc.warmup_epochs:g} warm-up epochs; "
            f"EMA {tc.ema_decay1} / {tc.ema_decay2}\n"
            f"[jitkit] run folder: {self.run_dir}",
            flush=True,
        )


def _why(record: dict) -> str:
    """How ``precision auto`` was decided, for the run's description (empty for an explicit precision)."""
    if record.get("requested") != "auto":
        return ""
    if record.get("reason") != "measured":
        return f": auto, {record.get('reason')}"
    peak, model = record.get("thresholds", [0, 0])
    large = f": auto; bf16 measured {record['peak_speedup']:.2f}× fp32 on large products (needs {peak:g}×)"
    if record.get("speedup") is None:
        return large
    return f"{large} and {record['speedup']:.2f}× on a block of this model, training (needs {model:g}×)"
