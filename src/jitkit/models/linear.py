"""Linear layers on the fastest matrix product of the CPU (float32; and bf16 when sampling eagerly).

torch runs a CPU ``F.linear`` in float32 through MKL's sgemm. MKL picks its kernels by CPU vendor: on AMD
processors it runs its AVX2 code even where the core has AVX-512, while oneDNN, which torch also carries, picks
by instruction set and runs the AVX-512 kernels on the same core (the two measured side by side:
benchmarks/README.md). Both compute in IEEE float32; they differ only in the order of the sums.

:class:`Linear` is an ``nn.Linear`` (same parameters, same state-dict keys) whose forward routes float32 CPU
inputs through oneDNN (``torch.ops.mkldnn._linear_pointwise``, forward and both backward products) when that
is the faster backend, and through ``F.linear`` everywhere else (GPUs, MPS, autocast, other dtypes), except
eager bf16 sampling on a CPU (see :func:`linear`).

The backend is ``auto`` unless set by :func:`set_cpu_linear_backend` or the environment variable
``JITKIT_CPU_LINEAR`` (``auto``, ``onednn`` or ``aten``): ``auto`` times both on one product of transformer
shape the first time a CPU linear runs (about 0.1 s) and keeps oneDNN only if it is at least 15 % faster.
Where it keeps oneDNN for the forward product, the two backward products (the input gradient g·w and the
weight gradient gᵀ·x) are timed the same way, each on its own: oneDNN's weight gradient copies gᵀ into a
contiguous operand first, which on some CPUs makes it the slower one even where its forward is faster (on an
Intel Xeon the copy made the default ``jitkit train`` 1.35× slower). With the process setting pinned to
``onednn`` (the setter or the environment variable) all three products run there.

Shape key: M rows (batch × tokens), K input features, N output features.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

BACKENDS = ("auto", "onednn", "aten")
_ENV = "JITKIT_CPU_LINEAR"
_choice: str | None = None  # the setting: None → the environment variable, else one of BACKENDS
_resolved: dict[int, str] = {}  # "auto" resolved per thread count
_last = "aten"  # the backend resolved last (what a torch.compile trace uses)
_resolved_backward: dict[int, tuple[str, str]] = {}  # "auto": (input grad, weight grad) per thread count
_last_backward = ("onednn", "onednn")  # the backward backends resolved last (for a torch.compile trace)


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear kernel (x86 and most ARM builds do)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _check_backend(name: str | None) -> None:
    """A backend name that can be set: one of BACKENDS (or None), and ``onednn`` only where it exists."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"CPU linear backend must be one of {', '.join(BACKENDS)}, received {name!r}")
    if name == "onednn" and not onednn_available():
        raise RuntimeError(
            "CPU linear backend 'onednn' asked for, but this torch build has no oneDNN kernels"
        )


def set_cpu_linear_backend(name: str | None) -> None:
    """Choose the float32 CPU linear backend: ``auto``, ``onednn``, ``aten`` or None (back to the default)."""
    global _choice
    _check_backend(name)
    _choice = name


def cpu_linear_setting() -> str:
    """The backend as set (``auto``, ``onednn`` or ``aten``), from the setter or ``JITKIT_CPU_LINEAR``."""
    if _choice is not None:
        return _choice
    env = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"{_ENV} must be one of {', '.join(BACKENDS)}, found {env!r}")
    return env


def _best_seconds(fn, repeats: int) -> float:
    """Best seconds of ``fn`` over ``repeats`` calls after one warm-up call (oneDNN creates its primitive on
    the first call)."""
    return _compare_seconds({"fn": fn}, repeats, warmup=1)["fn"]


def _compare_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Best seconds of each of ``fns`` over ``repeats`` calls, the calls interleaved (a drift of the machine's
    speed then reaches every candidate alike), after ``warmup`` calls of each (a library's first calls set up
    thread pools and buffers: timed alone, they once made MKL look 20 % slower than it is)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _probe_tensors(m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(m, k, generator=g),  # x
        torch.randn(n, k, generator=g),  # w
        torch.randn(n, generator=g),  # b
        torch.randn(m, n, generator=g),  # an output gradient
    )


def measure_cpu_linear(m: int = 512, k: int = 768, n: int = 2304, repeats: int = 7) -> dict[str, float]:
    """Seconds of one [m,k]·[k,n] float32 CPU product (``x·wᵀ + b``) on each backend (best of ``repeats``)."""
    x, w, b, _ = _probe_tensors(m, k, n)
    fns: dict[str, Callable[[], object]] = {"aten": lambda: F.linear(x, w, b)}
    if onednn_available():
        fns["onednn"] = lambda: _pointwise(x, w, b)
    return _compare_seconds(fns, repeats)


def measure_cpu_linear_backward(
    m: int = 512, k: int = 768, n: int = 2304, repeats: int = 7
) -> dict[str, dict[str, float]]:
    """Seconds of the two backward products of that linear on each backend: ``grad_input`` g·w [m,n]·[n,k]
    and ``grad_weight`` gᵀ·x [n,m]·[m,k] (best of ``repeats``)."""
    x, w, _, g = _probe_tensors(m, k, n)
    gi: dict[str, Callable[[], object]] = {"aten": lambda: g @ w}
    gw: dict[str, Callable[[], object]] = {"aten": lambda: g.t() @ x}
    if onednn_available():
        gi["onednn"] = lambda: _pointwise(g, w.t(), None)
        gw["onednn"] = lambda: _pointwise(g.t(), x.t(), None)
    return {"grad_input": _compare_seconds(gi, repeats), "grad_weight": _compare_seconds(gw, repeats)}


def _clearly_faster(t: dict[str, float]) -> str:
    """``onednn`` if it is at least 15 % faster than aten in ``t`` (seconds per backend), else ``aten``."""
    return "onednn" if "onednn" in t and t["aten"] >= 1.15 * t["onednn"] else "aten"


def _no_dispatch_modes() -> contextlib.AbstractContextManager:
    try:
        from torch.utils._python_dispatch import _disable_current_modes

        return _disable_current_modes()
    except ImportError:  # a torch without it: time inside the mode
        return contextlib.nullcontext()


def cpu_linear_backend() -> str:
    """The backend float32 CPU linears use now: ``onednn`` or ``aten`` (``auto`` resolved by measurement).

    Inside a ``torch.compile`` trace it returns the last backend resolved outside one (``aten`` if none was):
    reading the settings there would break the graph, and timing cannot be traced. ``JiT.compile_blocks``
    resolves it before compiling.
    """
    global _last
    if torch.compiler.is_compiling():
        return _last
    setting = cpu_linear_setting()
    if setting != "auto":
        _last = setting if setting == "aten" or onednn_available() else "aten"
        return _last
    threads = torch.get_num_threads()
    if threads not in _resolved:
        if not onednn_available():
            _resolved[threads] = "aten"
        else:
            # outside any active dispatch mode (a FlopCounterMode, a profiler's) that must not see the timing
            with torch.no_grad(), _no_dispatch_modes():
                _resolved[threads] = _clearly_faster(measure_cpu_linear())
    _last = _resolved[threads]
    if _last == "onednn":
        cpu_linear_backward()  # resolved now too, before any torch.compile trace needs it
    return _last


def cpu_linear_backward() -> tuple[str, str]:
    """The backends of the two backward products of a linear that runs forward on oneDNN: (input gradient,
    weight gradient), each ``onednn`` or ``aten``.

    ``onednn`` for both when the process setting is pinned (``onednn``; or ``aten``, where only a layer pinned
    to ``onednn`` itself gets here); under ``auto`` each product is timed on both
    (:func:`measure_cpu_linear_backward`, once per thread count) and runs on oneDNN only if that is at least
    15 % faster. Inside a ``torch.compile`` trace it returns what was resolved last, like
    :func:`cpu_linear_backend`.
    """
    global _last_backward
    if torch.compiler.is_compiling():
        return _last_backward
    if cpu_linear_setting() != "auto":
        _last_backward = ("onednn", "onednn")
        return _last_backward
    threads = torch.get_num_threads()
    if threads not in _resolved_backward:
        with torch.no_grad(), _no_dispatch_modes():
            t = measure_cpu_linear_backward()
        _resolved_backward[threads] = (_clearly_faster(t["grad_input"]), _clearly_faster(t["grad_weight"]))
    _last_backward = _resolved_backward[threads]
    return _last_backward


def _pointwise(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's x·wᵀ + b for a 2-D x [M,K] and w [N,K]; both may be strided (transposed views included)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def onednn_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M,K] · w [N,K]ᵀ on oneDNN, float32 CPU tensors (no autograd; the GEMM of the benchmark's peak)."""
    return _pointwise(x, w, None)


# A custom op (not a bare call of the mkldnn op) so that torch.compile keeps it as one opaque kernel with the
# inputs' strides: inductor's own lowering of ``mkldnn._linear_pointwise`` expects prepacked inference weights.
@torch.library.custom_op("jitkit::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x [M,K] · w [N,K]ᵀ + b [N] → [M,N] on oneDNN (float32, CPU)."""
    return _pointwise(x, w, b)


@onednn_linear.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    x, w, b = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = b is not None


def _backward(ctx, g: torch.Tensor):
    x, w = ctx.saved_tensors
    gx = gw = gb = None
    on_input, on_weight = cpu_linear_backward()
    if ctx.needs_input_grad[0]:
        # [M,N]·[N,K] (w.t() is a [K,N] "weight" view)
        gx = onednn_linear(g, w.t(), None) if on_input == "onednn" else g @ w
    if ctx.needs_input_grad[1]:
        gw = onednn_linear(g.t(), x.t(), None) if on_weight == "onednn" else g.t() @ x  # [N,M]·[M,K]
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = g.sum(0)
    return gx, gw, gb


onednn_linear.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.jitkit.onednn_linear)
def _flops(x_shape, w_shape, *args, **kwargs) -> int:
    """2·M·K·N, so that ``torch.utils.flop_counter`` counts these products as it counts ``aten.addmm``."""
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


def _use_onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, backend: str | None) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
        return False
    if b is not None and b.dtype != torch.float32:
        return False
    if x.numel() == 0 or x.layout != torch.strided or w.layout != torch.strided:
        return False
    if torch.is_autocast_enabled("cpu"):  # autocast casts F.linear's inputs; leave that path to torch
        return False
    if backend is None:
        return cpu_linear_backend() == "onednn"
    return backend == "onednn"


_onednn_bf16: bool | None = None  # whether oneDNN's linear runs bf16 here (checked once)


def onednn_bf16_available() -> bool:
    """Whether this build's oneDNN linear computes a bf16 product on this CPU: tried once on a tiny one
    (a build or CPU without bf16 support raises) and compared with ``F.linear``."""
    global _onednn_bf16
    if _onednn_bf16 is None:
        _onednn_bf16 = False
        if onednn_available():
            x = torch.arange(8.0).view(2, 4).bfloat16()
            w = torch.ones(3, 4, dtype=torch.bfloat16)
            try:
                with torch.no_grad(), _no_dispatch_modes():
                    _onednn_bf16 = bool(torch.equal(_pointwise(x, w, None), F.linear(x, w)))
            except RuntimeError:
                pass
    return _onednn_bf16


def _bf16_inference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> bool:
    """A bf16 product without autograd on a CPU, eager: weights kept in bf16 for sampling
    (:func:`jitkit.diffusion.generate.cast_for_inference`), the input bf16 or under bf16 autocast."""
    bf16 = torch.bfloat16
    # compiled graphs are left to inductor, which packs the weights itself
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if x.device.type != "cpu" or w.dtype != bf16 or (b is not None and b.dtype != bf16):
        return False
    if x.numel() == 0 or x.layout != torch.strided or w.layout != torch.strided:
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == bf16
    return (x.dtype == bf16 or (x.dtype == torch.float32 and autocast_bf16)) and onednn_bf16_available()


def _bias_in_epilogue(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether this linear adds its bias after the product, for inductor to fuse into the next kernel: in a
    compiled training graph (autograd on, inside ``torch.compile``) under CPU autocast.

    There inductor calls ATen's ``addmm`` with an output buffer, which first copies the broadcast bias into all
    [M, N] outputs in half precision — slow next to the product (JiT-B/16 at batch 8: 1.2–6 ms per w12 call,
    the product 7–12 ms). ``mm`` plus the bias added in float32 in the consumer's fused kernel made the
    compiled bf16 training step 1.017× and 1.028× faster (two interleaved A/Bs of 10 rounds, 2026-12-07). The
    sum is rounded to the half dtype after the product's own rounding (one extra rounding, within bf16's
    tolerance). Frozen inference graphs are not affected (no autograd: inductor puts the bias inside oneDNN's
    packed linear), nor float32, nor GPUs.
    """
    return (
        bias is not None
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and torch.compiler.is_compiling()
        and torch.is_autocast_enabled("cpu")
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str | None = None
) -> torch.Tensor:
    """``F.linear`` on the faster float32 CPU backend (see the module docstring); ``F.linear`` elsewhere.

    ``backend``: ``onednn`` or ``aten`` for this call, or None for the process setting (``auto`` resolved).

    Eager bf16 inference on a CPU (bf16 weights, no autograd) runs on oneDNN's linear, which adds the bias
    inside the product: ATen's ``addmm`` first copies the broadcast bias into the output (on JiT-B/16 sampling
    eagerly in bf16, 6 % of the time). The input is cast to bf16 as autocast would cast it. In compiled training
    under CPU autocast the bias is added after the product instead (:func:`_bias_in_epilogue`).
    """
    if _bias_in_epilogue(x, bias):
        y = F.linear(x, weight)  # [.., N] in the autocast dtype
        return (y.float() + bias.float()).to(y.dtype)
    bf16 = _bf16_inference(x, weight, bias)
    if not bf16 and not _use_onednn(x, weight, bias, backend):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M,K]
    if bf16:
        with torch.autocast("cpu", enabled=False):
            y = _pointwise(rows.to(torch.bfloat16), weight, bias)
    else:
        y = onednn_linear(rows, weight, bias)  # [M,N]
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed by :func:`linear`.

    ``cpu_linear`` (not saved) pins this layer's float32 CPU backend; None follows the process setting.
    """

    cpu_linear: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.cpu_linear)


def use_cpu_linear(model: nn.Module, backend: str | None) -> nn.Module:
    """Pin the float32 CPU linear backend of every layer of ``model`` (``onednn``, ``aten``; ``auto`` or None:
    the process setting). Layers carry it as the attribute ``cpu_linear``; returns ``model``."""
    if backend == "auto":
        backend = None
    _check_backend(backend)
    for m in model.modules():
        if hasattr(m, "cpu_linear"):
            m.cpu_linear = backend
    return model


# -- bf16 or fp32 on this CPU, for a model of this size ------------------------------------------------------

_bf16_probe: dict[tuple[int, int, int, int], dict[str, float]] = {}


def bf16_probe_off() -> bool:
    """``JITKIT_BF16_PROBE=off`` (or 0, none): no bf16 speed measurement, ``auto`` means fp32 on CPUs."""
    return os.environ.get("JITKIT_BF16_PROBE", "").strip().lower() in ("0", "off", "none")


def bf16_linear_speedup(rows: int, in_features: int, out_features: int, repeats: int = 5) -> dict[str, float]:
    """How much faster a CPU linear of shape [rows, in] · [in, out] runs under bf16 autocast than in float32 on
    the backend the layers use (:func:`cpu_linear_backend`), and the same for a large square product (what
    the bf16 units can do at best). Measured once per shape and thread count (about 0.1-0.3 s), then cached.

    Returns ``{"fp32_gflops", "bf16_gflops", "speedup", "peak_speedup", "shape"}``; ``speedup`` includes the
    casts autocast makes (activations and weights to bf16, the output back), which dominate small models.
    ``JITKIT_BF16_PROBE=off`` skips the measurement and reports no speed-up (``auto`` then means fp32, the
    same on every CPU: the test suite sets it).
    """
    if bf16_probe_off():
        # measured speed makes ``auto`` differ between machines; tests and reproducible runs switch it off
        off = {"fp32_gflops": 0.0, "bf16_gflops": 0.0, "speedup": 1.0, "peak_speedup": 1.0}
        return {
            **off,
            "shape": [int(rows), int(in_features), int(out_features)],
            "probe": "JITKIT_BF16_PROBE=off",
        }
    key = (int(rows), int(in_features), int(out_features), torch.get_num_threads())
    if key in _bf16_probe:
        return _bf16_probe[key]
    f32, b16 = _linear_rates(rows, in_features, out_features, repeats)
    _bf16_probe[key] = {
        "fp32_gflops": round(f32, 1),
        "bf16_gflops": round(b16, 1),
        "speedup": round(b16 / f32, 3),
        "peak_speedup": bf16_peak_speedup(repeats),
        "shape": [int(rows), int(in_features), int(out_features)],
    }
    return _bf16_probe[key]


_bf16_peak: dict[int, float] = {}


def bf16_peak_speedup(repeats: int = 5) -> float:
    """bf16 ÷ fp32 speed of a large (1024³) CPU product, casts included: what the bf16 units can do at best.
    Measured once per thread count; 1.0 with ``JITKIT_BF16_PROBE=off``."""
    if bf16_probe_off():
        return 1.0
    threads = torch.get_num_threads()
    if threads not in _bf16_peak:
        f32, b16 = _linear_rates(1024, 1024, 1024, repeats)
        _bf16_peak[threads] = round(b16 / f32, 3)
    return _bf16_peak[threads]


def _linear_rates(m: int, k: int, n: int, repeats: int) -> tuple[float, float]:
    """GFLOP/s of a CPU linear [m, k] · [k, n] in float32 (on the layers' backend) and under bf16 autocast."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    onednn = cpu_linear_backend() == "onednn"

    def fp32() -> None:
        _pointwise(x, w, b) if onednn else F.linear(x, w, b)

    def bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.linear(x, w, b).float()

    work = 2.0 * m * k * n
    with _no_dispatch_modes():
        return work / _best_seconds(fp32, repeats) / 1e9, work / _best_seconds(bf16, repeats) / 1e9
