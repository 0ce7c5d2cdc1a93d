"""The only module that imports torch.distributed: process groups, DDP/FSDP wrapping, collectives, ranks.

The rule every caller follows: a collective is only called from code that every rank runs, and every
decision that leads into one (save now, stop now, evaluate now) is taken once and shared — folded into a
collective all ranks already make, or reduced with :func:`any_rank` — never read from one rank's clock or
one rank's callback. The process group has an explicit timeout (``init(timeout_s=...)``), so a rank that
stops answering fails the job with an error instead of hanging it.

One process needs no environment variables: ``init()`` returns a world of size 1 and every helper
degenerates to a no-op. Under ``torchrun`` (WORLD_SIZE > 1) it joins the process group with NCCL on CUDA
and gloo on CPU, pins each rank to its local GPU, and the trainer wraps the model in DDP, or shards it
with FSDP2 (``torch.distributed.fsdp.fully_shard``) when asked.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEFAULT_TIMEOUT_S = 1800.0  # a rank waiting this long in a collective fails the job (torch's default too)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistInfo",
    "FullTensors",
    "any_rank",
    "gather_to_main",
    "local_world_size",
    "state_dict_to_main",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "env_world",
    "full_optimizer_state",
    "full_tensors",
    "init",
    "is_initialized",
    "load_model_state",
    "load_optimizer_state",
    "no_sync",
    "rank",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def local_world_size() -> int:
    """Processes on this host: torchrun's LOCAL_WORLD_SIZE (on several nodes smaller than WORLD_SIZE)."""
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", str(ws)) or ws))


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    return rank, ws, local


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA); return this rank's info.

    On CUDA each rank uses GPU LOCAL_RANK. A collective that waits longer than ``timeout_s`` seconds raises
    on the waiting ranks. Works also when the group was initialised by the caller (tests spawn processes and
    call ``init_process_group`` themselves).
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, found {timeout_s}")
    rank, ws, local = env_world()
    if is_initialized():
        rank, ws = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if ws <= 1:
        return DistInfo(0, 1, 0, device, "")
    if not torch.distributed.is_available():
        raise RuntimeError(f"WORLD_SIZE={ws} but this torch build has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(
                    f"WORLD_SIZE={ws} but {var} is not set; start multi-process runs with "
                    f"torchrun --nproc_per_node={ws} -m jitkit train ..."
                )
        torch.distributed.init_process_group(
            backend=backend, rank=rank, world_size=ws, timeout=datetime.timedelta(seconds=timeout_s)
        )
        global _GROUP_OWNED
        _GROUP_OWNED = True
        atexit.unregister(_leave_at_exit)  # once, however often a process joins
        atexit.register(_leave_at_exit)
    else:
        backend = torch.distributed.get_backend()
    return DistInfo(rank, ws, local, device, backend)


_GROUP_OWNED = False  # set when init() created the process group (a torchrun rank), not its caller


def _leave_at_exit() -> None:
    """At interpreter exit, leave a process group that :func:`init` created and nobody left (a library caller of
    ``jitkit.train.train`` under torchrun, say; ``jitkit train`` leaves it itself). Left to the interpreter's
    teardown, the gloo group's threads could be destroyed while still joinable and the process aborted after a
    finished run ("terminate called without an active exception", exit status −6)."""
    try:
        cleanup()
    except Exception as e:  # the run's files are written: say so, and exit anyway
        print(f"jitkit: leaving the process group at exit failed: {e}", file=sys.stderr)


def cleanup(info: DistInfo | None = None) -> None:
    """Leave the process group. Collect garbage first: pending work objects of the backend (FSDP's last
    all-gathers) that hold tensors must go while the interpreter is fully alive."""
    if is_initialized():
        import gc

        gc.collect()
        torch.distributed.destroy_process_group()


def owned_group_used() -> bool:
    """Whether this process joined a process group of its own (a ``torchrun`` rank) at some point."""
    return _GROUP_OWNED


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (``x`` itself in one process)."""
    if not is_initialized():
        return x
    y = x.detach().clone()
    torch.distributed.all_reduce(y, op=torch.distributed.ReduceOp.SUM)
    return y / torch.distributed.get_world_size()


def _comm_device() -> torch.device:
    """Where the backend's tensors live: the rank's GPU for NCCL, the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (``x`` itself in one process); ``x`` may live on any device."""
    if not is_initialized():
        return x
    y = x.detach().to(_comm_device(), copy=True)
    torch.distributed.all_reduce(y, op=torch.distributed.ReduceOp.SUM)
    return y.to(x.device)


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the others (a collective)."""
    if not is_initialized():
        return [obj]
    out = [None] * torch.distributed.get_world_size() if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def rank() -> int:
    """This process's rank: from the process group when there is one, else from torchrun's RANK (0 alone)."""
    if is_initialized():
        return torch.distributed.get_rank()
    return env_world()[0]


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def wrap_model(model: nn.Module, info: DistInfo, *, fsdp: bool = False, precision: str = "fp32") -> nn.Module:
    """DDP (or FSDP2 ``fully_shard`` per block, then the root) when running on several processes.

    Under FSDP2 with ``precision`` bf16/fp16 the gathered parameters are cast to that dtype for the forward
    and backward (``MixedPrecisionPolicy``; gradients are reduced in float32, the sharded master weights and
    optimizer state stay float32), which halves the gathers.
    """
    if not info.enabled:
        return model
    if fsdp:
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError as e:  # torch < 2.6
            raise RuntimeError(
                "FSDP (fsdp=True) needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)"
            ) from e
        kw: dict[str, Any] = {}
        if precision in ("bf16", "fp16"):
            half = torch.bfloat16 if precision == "bf16" else torch.float16
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)
        net = getattr(model, "net", model)
        for block in getattr(net, "blocks", []):
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(model: nn.Module, skip_sync: bool):
    """Context in which DDP does not all-reduce gradients (accumulation micro-steps before the last one).

    FSDP2 reduce-scatters after every micro-step instead: skipping it would keep whole (unsharded) gradients
    on every rank until the last micro-step, the memory FSDP is used to save; the sum is the same.
    """
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def full_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather FSDP2 DTensor shards into whole tensors (a collective: call on every rank); others unchanged."""
    out = {}
    for k, v in sd.items():
        full = getattr(v, "full_tensor", None)
        out[k] = full() if callable(full) else v
    return out


class FullTensors(dict):
    """A state dict whose FSDP2 DTensor shards are gathered into whole tensors only when indexed (a collective
    per item: every rank must index the same keys in the same order)."""

    def __getitem__(self, key: str) -> torch.Tensor:
        v = super().__getitem__(key)
        full = getattr(v, "full_tensor", None)
        return full() if callable(full) else v


def state_dict_to_main(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole CPU tensors of ``sd`` on rank 0 (an empty dict on the others).

    FSDP2 shards are gathered one tensor at a time, each dropped on the other ranks at once, so no rank
    holds more than one whole tensor on its device beside its shards (a collective under FSDP2: call on
    every rank). Plain tensors are copied by rank 0 only.
    """
    main = not is_initialized() or torch.distributed.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        full = getattr(v, "full_tensor", None)
        if callable(full):
            t = full()
            if main:
                out[k] = t.detach().to("cpu", copy=True)
            del t
        elif main:
            out[k] = v.detach().to("cpu", copy=True)
    return out


def copy_full_into(dst: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into ``dst``, which may be an FSDP2 DTensor shard (then only its shard is copied)."""
    if hasattr(dst, "device_mesh") and hasattr(dst, "placements"):
        from torch.distributed.tensor import distribute_tensor

        src = distribute_tensor(full.to(dst.device, dst.dtype), dst.device_mesh, dst.placements)
        dst.to_local().copy_(src.to_local())
    else:
        dst.copy_(full.to(device=dst.device, dtype=dst.dtype))


def load_model_state(model: nn.Module, sd: Any) -> None:
    """Copy ``sd`` (a mapping of whole tensors, possibly read lazily one at a time) into ``model``'s state,
    tensor by tensor; FSDP2 DTensor parameters receive only their shard. The caller checks keys and shapes
    first (``jitkit.checkpoint.check_state_dict``)."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            copy_full_into(v, sd[k])


def load_optimizer_state(model: nn.Module, optimizer, sd: dict, sharded: bool) -> None:
    """Load a full (gathered) optimizer state dict, resharding it under FSDP2."""
    if not sharded:
        optimizer.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, sd, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer, sharded: bool) -> dict:
    """The whole optimizer state dict, gathered to CPU under FSDP2 (a collective then: call on every rank)."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
