"""Peak memory of one training process: the estimate the planner plans with (:func:`estimate_memory`) and the
measured CPU peak that checks it (:func:`measure_peak_cpu`; the test runs it in fresh processes and requires
the estimate within 25 %).

Device memory per process (bytes), with P parameters (P_t trainable), micro-batch m, world size W:

    weights 4P + gradients 4P_t + AdamW moments 8P_t + two EMAs 8P          (fp32 master state)
      (FSDP divides all four by W)
    activations  m · a          a = bytes autograd saves for backward per image, measured by tracing one
                                forward on the meta device (no memory used) with saved-tensor hooks;
                                with activation checkpointing: block inputs + the largest block's a
    workspace    the largest block's activations m · a_block (gradients in flight during backward)
    bf16/fp16 autocast: activations × 0.6 (matmul inputs are saved in half precision, norms in fp32)
    CUDA context ≈ 0.5 GiB on GPUs

and what each way of running adds:

    FSDP2 (W > 1)   what it does not shard: the root's parameters (embedders, final layer: FSDP2 keeps the
                    root gathered from forward to backward) and two blocks' (the one computed and the next,
                    prefetched), b·(P_root + 2·P_block) with b = 2 under bf16/fp16 (the MixedPrecisionPolicy
                    of ``runtime.dist.wrap_model``) else 4, + one block's unsharded float32 gradient before its
                    reduce-scatter, 4·P_block
    DDP (W > 1)     its gradient buckets, 4P_t (a copy of the gradients: ``gradient_as_bucket_view`` is off)
    bf16/fp16 autocast without FSDP: the half-precision copies of the Linear/Conv weights that autocast
                    caches during the forward (kept for backward), 2·P_cast
    evaluation      a float32 replica of the EMA weights for sampling during training, 4P; under FSDP it is
                    built for the evaluation only (the EMA shards gathered whole first: + 4P), so the peak is
                    the larger of the training step and (state + evaluation); otherwise it stays built and
                    counts on top of the step

The attention of ``attention="sdpa"`` is traced as the fused (flash) kernel that runs it on CPUs and GPUs: it
saves q, k, v, the output and the log-sum-exp [B, H, T], not the [B, H, T, T] attention matrix that SDPA's
math path (the one the meta device takes) would keep. ``math-fp32`` is traced as it runs.

The peak measured by :func:`measure_peak_cpu` is the kernel's high-water mark of the process's memory
(VmHWM), reset to the current RSS through /proc/self/clear_refs before the model is built; ``ru_maxrss`` is
the fallback where /proc does not allow that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jitkit.config import ModelConfig
from jitkit.runtime.memory import fmt_bytes

__all__ = [
    "ActivationProfile",
    "MemoryEstimate",
    "ParamCounts",
    "activation_profile",
    "estimate_memory",
    "estimate_sampling_memory",
    "fmt_bytes",
    "inference_bytes_per_image",
    "measure_peak_cpu",
    "param_counts",
]

GiB = 1 << 30
MiB = 1 << 20
CUDA_CONTEXT = int(0.5 * GiB)
HALF_ACT_FACTOR = 0.6
HALF = ("bf16", "fp16")


def _cfg_key(cfg: ModelConfig) -> tuple:
    return tuple(sorted(cfg.replace(grad_checkpoint=False).to_dict().items()))


# -- parameters -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of the network that the memory terms need."""

    total: int  # P
    trainable: int  # P_t
    block: int  # P_block: the largest block's parameters
    root: int  # P_root: all outside the blocks (embedders, tables, final layer)
    cast: int  # P_cast: trainable Linear and Conv weights and biases (what autocast casts to half precision)


_COUNT_CACHE: dict[tuple, ParamCounts] = {}


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """The network's :class:`ParamCounts`, counted on the meta device."""
    key = _cfg_key(cfg)
    if key in _COUNT_CACHE:
        return _COUNT_CACHE[key]
    import torch
    from torch import nn

    from jitkit.models.jit import JiT

    with torch.device("meta"):
        net = JiT(cfg)
    blocks = [sum(p.numel() for p in b.parameters()) for b in net.blocks]
    cast = sum(
        p.numel()
        for m in net.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
        for p in m.parameters(recurse=False)
        if p.requires_grad
    )
    total = sum(p.numel() for p in net.parameters())
    counts = ParamCounts(
        total=total,
        trainable=sum(p.numel() for p in net.parameters() if p.requires_grad),
        block=max(blocks, default=0),
        root=total - sum(blocks),
        cast=cast,
    )
    _COUNT_CACHE[key] = counts
    return counts


# -- activation trace -----------------------------------------------------------------------------------------


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


def _fused_attention_mode():
    """A torch-function mode under which ``F.scaled_dot_product_attention`` (without a mask) runs the CPU flash
    kernel, which also has a meta implementation: autograd then saves what the fused kernels save."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class FusedAttention(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention and kwargs.get("attn_mask") is None and len(args) == 3:
                q, k, v = args
                out, _lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q,
                    k,
                    v,
                    kwargs.get("dropout_p", 0.0),
                    kwargs.get("is_causal", False),
                    scale=kwargs.get("scale"),
                )
                return out
            return func(*args, **kwargs)

    return FusedAttention()


_PROFILE_CACHE: dict[tuple, ActivationProfile] = {}


def activation_profile(cfg: ModelConfig, batch: int = 2) -> ActivationProfile:
    """Trace one training forward (loss included) on the meta device and count saved-tensor bytes."""
    key = _cfg_key(cfg)
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
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _fused_attention_mode():
            den.loss(x, y)
    finally:
        for h in hooks:
            h.remove()
    per_block = [totals.get(f"block{i}", 0.0) / batch for i in range(cfg.depth)]
    block_in = max(inputs.values(), default=0.0) / batch
    prof = ActivationProfile(sum(totals.values()) / batch, per_block, block_in)
    _PROFILE_CACHE[key] = prof
    return prof


# -- the estimate ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process of each term of the module docstring (0 where a term does not apply)."""

    weights: int
    grads: int
    optimizer: int
    ema: int
    activations: int
    workspace: int
    context: int
    gathered: int = 0  # FSDP2: the root's and two blocks' whole parameters, one block's whole gradient
    buckets: int = 0  # DDP's gradient buckets
    autocast: int = 0  # autocast's half-precision weight copies
    evaluation: int = 0  # the replica of the EMA weights for evaluation (and, under FSDP, its gathered state)
    eval_kept: bool = True  # the replica stays built between evaluations (no FSDP)

    @property
    def state(self) -> int:
        return self.weights + self.grads + self.optimizer + self.ema

    @property
    def step(self) -> int:
        """The training step's peak (with the evaluation replica when it stays built)."""
        kept = self.evaluation if self.eval_kept else 0
        work = self.activations + self.workspace + self.gathered + self.buckets + self.autocast
        return self.state + work + self.context + kept

    @property
    def total(self) -> int:
        """The peak: the training step's, or the evaluation's when that is larger."""
        return max(self.step, self.state + self.context + self.evaluation)

    def breakdown(self) -> str:
        parts = [
            ("weights", self.weights),
            ("grads", self.grads),
            ("AdamW", self.optimizer),
            ("EMAs", self.ema),
            ("activations", self.activations),
            ("workspace", self.workspace),
            ("FSDP gathered", self.gathered),
            ("DDP buckets", self.buckets),
            ("autocast weights", self.autocast),
            ("eval replica" + ("" if self.eval_kept else " (during evaluation only)"), self.evaluation),
            ("context", self.context),
        ]
        always = ("weights", "grads", "AdamW", "EMAs", "activations", "workspace")
        return ", ".join(f"{k} {fmt_bytes(v)}" for k, v in parts if v or k in always)


def estimate_memory(
    cfg: ModelConfig,
    micro_batch: int,
    *,
    precision: str = "fp32",
    grad_checkpoint: bool | None = None,
    world_size: int = 1,
    fsdp: bool = False,
    device_kind: str = "cpu",
    evaluation: bool = False,
) -> MemoryEstimate:
    """Peak memory of one of ``world_size`` training processes (the terms are in the module docstring).

    ``precision`` is a resolved one (fp32 | bf16 | fp16); ``fsdp`` shards only with ``world_size`` > 1 (as
    ``runtime.dist.wrap_model``); ``evaluation`` counts the replica that sampling during training builds.
    """
    if precision not in ("fp32", *HALF):
        raise ValueError(
            f"precision must be fp32, bf16 or fp16 here (resolve 'auto' first), found {precision!r}"
        )
    if world_size < 1 or micro_batch < 1:
        raise ValueError(f"world_size and micro_batch must be >= 1, found {world_size} and {micro_batch}")
    gc = cfg.grad_checkpoint if grad_checkpoint is None else grad_checkpoint
    n = param_counts(cfg)
    P, Pt = n.total, n.trainable
    sharded = fsdp and world_size > 1
    shard = world_size if sharded else 1
    prof = activation_profile(cfg)
    per_img = prof.checkpointed() if gc else prof.total
    half = precision in HALF
    f = HALF_ACT_FACTOR if half else 1.0
    gathered = (2 if half else 4) * (n.root + 2 * n.block) + 4 * n.block if sharded else 0
    return MemoryEstimate(
        weights=4 * P // shard,
        grads=4 * Pt // shard,
        optimizer=8 * Pt // shard,
        ema=8 * P // shard,
        activations=int(micro_batch * per_img * f),
        workspace=int(micro_batch * max(prof.per_block, default=0.0) * f),
        context=CUDA_CONTEXT if device_kind == "cuda" else 0,
        gathered=gathered,
        buckets=4 * Pt if world_size > 1 and not sharded else 0,
        autocast=2 * n.cast if half and not sharded else 0,
        evaluation=(4 * P + (4 * P if sharded else 0)) if evaluation else 0,
        eval_kept=not sharded,
    )


# -- inference ------------------------------------------------------------------------------------------------


def _live_bytes_mode():
    """A dispatch mode that counts the bytes of the storages alive at once (each storage once, however many views
    share it; freed when its last tensor goes) and keeps the largest count: the peak of an eager forward."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.now = self.peak = 0
            self.refs: dict[int, list[int]] = {}  # storage → [tensors alive, bytes]

        def _release(self, key: int) -> None:
            ref = self.refs[key]
            ref[0] -= 1
            if ref[0] == 0:
                self.now -= ref[1]
                del self.refs[key]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage._cdata
                    if key in self.refs:
                        self.refs[key][0] += 1
                    else:
                        self.refs[key] = [1, storage.nbytes()]
                        self.now += storage.nbytes()
                        self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._release, key)
            return out

    return LiveBytes()


_INFERENCE_CACHE: dict[tuple, float] = {}


def inference_bytes_per_image(cfg: ModelConfig, batch: int = 8) -> float:
    """Peak bytes alive during one float32 forward without autograd, per image of the batch: traced on the meta
    device (no memory used) with the fused attention that runs it, the weights not counted. With glibc's default
    allocator policy the RSS growth of a large forward matches it (Intel Xeon, torch 2.13: JiT-B/16 at 256
    images 3.03 GiB against 2.98 traced, JiT-S/4 at 2,048 1.52 against 1.46); see ``HOST_FRAGMENTATION``."""
    key = _cfg_key(cfg)
    if key not in _INFERENCE_CACHE:
        import torch

        from jitkit.models.jit import JiT

        with torch.device("meta"):
            net = JiT(cfg.replace(grad_checkpoint=False)).eval()
        x = torch.zeros(batch, cfg.in_channels, cfg.img_size, cfg.img_size, device="meta")
        t = torch.zeros(batch, device="meta")
        y = torch.zeros(batch, dtype=torch.long, device="meta")
        mode = _live_bytes_mode()
        with torch.no_grad(), _fused_attention_mode(), mode:
            net(x, t, y)
        _INFERENCE_CACHE[key] = mode.peak / batch
    return _INFERENCE_CACHE[key]


INFERENCE_OVERHEAD = 256 * MiB  # library buffers of a sampling process (MKL, oneDNN, thread pools)
SAMPLER_STATE_IMAGES = 8  # image-sized tensors per image a solver keeps (state, velocity, estimates, noise)
# Under jitkit's host allocator policy (jitkit.runtime.retain_freed_memory: freed memory kept in the heap) the
# transient tensors of a forward fragment the heap: RSS growth of one eager no-grad forward in a fresh process,
# against the live bytes traced (Intel Xeon, torch 2.13, 2026-12-07): JiT-T/4 512 images 1.55×, 2,048 1.54×;
# JiT-S/4 512 1.67×, 1,024 1.88×; JiT-B/16 32 1.33×. (Training keeps its activations until backward and
# matches its estimate within 5 % under the same policy.) GPUs' caching allocators are not measured here.
HOST_FRAGMENTATION = 1.6


def estimate_sampling_memory(
    cfg: ModelConfig, batch: int, *, precision: str = "fp32", guidance: bool = True, device_kind: str = "cpu"
) -> int:
    """Peak bytes of sampling ``batch`` images at once: the float32 weights (+ a half-precision copy in bf16/
    fp16), the network's live activations for ``batch`` rows — twice that under classifier-free guidance (the
    conditional and unconditional passes run as one batch), times ``HOST_FRAGMENTATION`` on the host — the
    solver's state, ``INFERENCE_OVERHEAD`` and a CUDA context on GPUs."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, found {batch}")
    n = param_counts(cfg)
    rows = 2 * batch if guidance else batch
    half = precision in HALF
    act = rows * inference_bytes_per_image(cfg) * (HALF_ACT_FACTOR if half else 1.0)
    act *= HOST_FRAGMENTATION if device_kind in ("cpu", "mps") else 1.0
    state = batch * SAMPLER_STATE_IMAGES * 4 * cfg.in_channels * cfg.img_size**2
    context = CUDA_CONTEXT if device_kind == "cuda" else 0
    weights = 4 * n.total + (2 * n.total if half else 0)
    return int(weights + act + state + INFERENCE_OVERHEAD + context)


# -- the measurement ------------------------------------------------------------------------------------------


def measure_peak_cpu(cfg: ModelConfig, micro_batch: int, steps: int = 2) -> dict[str, int]:
    """Measure a training step's peak memory on CPU *in this process*: peak RSS growth over the RSS after
    importing torch (run it in a fresh subprocess so nothing else has touched the heap)."""
    import gc
    import resource

    import torch

    from jitkit.config import DiffusionConfig
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.jit import JiT
    from jitkit.train.ema import EMA

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    torch.set_num_threads(1)
    # warm up torch's lazy initialisation on a throwaway tiny model so it does not count
    tiny = Denoiser(
        JiT(
            cfg.replace(
                depth=1,
                hidden_size=16,
                num_heads=1,
                bottleneck_dim=4,
                in_context_len=0,
                in_context_start=0,
                img_size=cfg.patch_size,
            )
        ),
        DiffusionConfig(),
        cfg.num_classes,
    )
    tl = tiny.loss(torch.zeros(1, 3, cfg.patch_size, cfg.patch_size), torch.zeros(1, dtype=torch.long))
    tl.backward()
    torch.optim.AdamW(tiny.parameters(), foreach=True).step()
    del tiny, tl
    gc.collect()
    base = rss()
    # The peak is the kernel's high-water mark of this process's memory (VmHWM), reset here to the current
    # RSS through /proc/self/clear_refs. ru_maxrss is only a fallback: Linux carries it over from the parent
    # across fork + exec, so in a child of a large process it starts at the parent's size.
    hwm_reset = _reset_hwm()
    peak_before = base if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    den = Denoiser(JiT(cfg), DiffusionConfig(), cfg.num_classes)
    opt = torch.optim.AdamW([p for p in den.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    ema = EMA(den, (0.9999, 0.9996))
    x = torch.randn(micro_batch, cfg.in_channels, cfg.img_size, cfg.img_size)
    y = torch.zeros(micro_batch, dtype=torch.long)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        den.loss(x, y).backward()
        opt.step()
        ema.update(den)
    peak = _read_hwm() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"base": base, "peak": peak, "peak_before": peak_before, "growth": peak - max(base, peak_before)}


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_hwm() > 0
    except OSError:
        return False


def _read_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
