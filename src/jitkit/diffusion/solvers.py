r"""Multistep exponential solvers for the x-prediction flow (DPM-Solver++(2M), (3M)), derived for jitkit's path.

The flow
--------
The path is z_t = t·x + (1−t)·e (t = 0 noise, t = 1 data), so α_t = t, σ_t = 1 − t and the log-SNR is
λ = log(α/σ) = log(t/(1−t)). The network predicts the clean image x̂(z, t) and the sampler's velocity is
(JIT_SPEC, Sampling)

    dz/dt = v = (x̂ − z) / c(t),        c(t) = max(1 − t, t_eps).

Integrating factor
------------------
The ODE is linear in z apart from x̂. With w(t) = exp ∫_0^t du/c(u),

    w(t) = 1/(1−t)                                   for t ≤ 1 − t_eps,
    w(t) = (1/t_eps)·exp((t − 1 + t_eps)/t_eps)      for t > 1 − t_eps (where the clamp holds),

d(w·z)/dt = w·x̂/c = x̂·dw/dt, so exactly

    z_t = a·z_s + (1/w_t) ∫_s^t x̂(u) dw(u),        a = w_s/w_t  (= σ_t/σ_s where the clamp does not act).   (1)

The linear part is solved exactly; only x̂ is approximated — the data-prediction exponential integrator of
DPM-Solver++ (Lu et al., 2022), for this path and with the reference's t_eps clamp built in, so that it
converges to the same solution as the reference's Euler/Heun (which integrate the clamped field; the clamp
keeps w finite at t = 1, w_1 = e/t_eps).

DPM-Solver++ in λ (the published form)
--------------------------------------
Where the clamp does not act, w − 1 = t/(1−t) = e^λ, so dw = e^λ dλ and (1) is
z_t = (σ_t/σ_s)·z_s + σ_t ∫ e^λ x̂(λ) dλ. Expanding x̂ in λ, x̂ ≈ x̂_s + (λ−λ_s)·x̂'_s, with h = λ_t − λ_s:

    z_t = (σ_t/σ_s)·z_s + α_t·((1 − e^{−h})·x̂_s + (h − 1 + e^{−h})·x̂'_s),

and the multistep (2M) estimate x̂'_s ≈ (x̂_s − x̂_{s−1})/(λ_s − λ_{s−1}) (the published 2M writes
(1 − e^{−h})·h/2 for h − 1 + e^{−h}, equal to O(h³)). First order is DDIM, which here is exactly the Euler step
in t: z_t = z_s + (t−s)·(x̂_s − z_s)/(1−s). :func:`jitkit.bench.variants.lambda_multistep_update` implements this form (τ = log(w − 1)
continues λ through the clamp).

Why jitkit expands x̂ in t instead
---------------------------------
Along a solution x̂ = z + (1−t)·v, so dx̂/dt = (1−t)·dv/dt: x̂ is a smooth function of t on all of [0, 1] and
flattens at the data end. In λ, by contrast, x̂ − x̂_1 ~ (1−t)² ~ e^{−2λ} and x̂ − x̂_0 ~ t ~ e^{λ}: exponential
tails that a polynomial in λ fits badly exactly where the grid's steps are widest in λ, and λ_0 = −∞ makes the
first two steps first order. On a trained shapes model (benchmarks/solvers.py) the λ form at 10 steps has
about 1.3× the error of the t form. So jitkit's ``dpm++2m``/``dpm++3m`` keep DPM-Solver++'s construction — the
exponential integrator (1), data prediction, one network evaluation per step, a polynomial through the last
2 (3) predictions — with the polynomial in t, integrated exactly against dw:

    z_t = a·z_s + Σ_j W_j·x̂_j,     W_j = (1/w_t) ∫_s^t ℓ_j(u) dw(u),                                      (2)

ℓ_j the Lagrange basis of the nodes t_j (the current and earlier step times). The weights are exact:
M_m = (1/w_t) ∫_s^t (u−s)^m dw = (t−s)^m − (m/w_t) ∫_s^t (u−s)^{m−1} w du (by parts), where ∫ (u−s)^n w du
is a logarithm plus powers of σ = 1 − u below the clamp (w = 1/σ) and exponentials above it.

Order. A step through p nodes has local error O(h^{p+1}). The first step has only x̂_0 (first order; x̂ at
t = 0 is the class mean and carries no derivative information), the second uses two nodes (second order),
and from the third on 3M uses three. The last step (into t = 1) uses at most two nodes: a linear
extrapolation cannot overshoot like a parabola over the widest step, which keeps few-step runs stable (the
reference's last step is first order). Globally every multistep solver here is second order, since the first
step's local error is O(h²); 3M lowers the constant.

Corrector (``dpm++2m-pc``, ``dpm++3m-pc``)
------------------------------------------
The predictor above extrapolates x̂ over [s, t] from nodes at and before s. Once the network has been
evaluated at the predicted state, x̂_t = x̂(z_t^pred, t) — the evaluation the next step needs anyway — the
step s → t is redone from z_s with (2) through the nodes t, s (and the one before s for 3M): an
interpolation instead of an extrapolation, the exponential-integrator form of an Adams–Moulton step, in
the spirit of UniC (Zhao et al., "UniPC", 2023). The corrected z_t replaces the predicted one as the start
of the next step; the next step reuses x̂_t, evaluated at the predicted state (no second evaluation), so the
corrector costs no network evaluation. The last step (into t = 1) is not corrected: nothing is evaluated at
t = 1. Its gain is largest on the first step, which the predictor takes at first order (x̂ at t = 0 has no
history) and the corrector redoes at second order. On a trained shapes model at 10 steps (10 evaluations)
the corrector lowers the RMS error against a 500-step Heun solution by a fifth to a quarter (docs/sampling.md).

All step weights are Python floats (float64) from the grid; the state stays float32.

Shape key: z, x̂ [B, C, S, S].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "CORRECTED",
    "FINAL_ORDER",
    "MULTISTEP_ORDER",
    "clamp_weight",
    "lagrange_weights",
    "multistep_update",
    "order_note",
    "solver_time",
    "t_moments",
]

# the order of each multistep solver (SamplerConfig.method → p), and the most nodes the last step uses
MULTISTEP_ORDER = {"dpm++2m": 2, "dpm++3m": 3, "dpm++2m-pc": 2, "dpm++3m-pc": 3}
# the predictor-corrector solvers (see "Corrector" above): method → its predictor
CORRECTED = {"dpm++2m-pc": "dpm++2m", "dpm++3m-pc": "dpm++3m"}
FINAL_ORDER = 2


def clamp_weight(t: float, t_eps: float) -> float:
    """w(t) = exp ∫_0^t du / max(1 − u, t_eps): 1/(1−t) up to 1 − t_eps, then growing as exp(·/t_eps)."""
    edge = 1.0 - t_eps
    if t <= edge:
        return 1.0 / (1.0 - t)
    return math.exp((t - edge) / t_eps) / t_eps


def solver_time(t: float, t_eps: float) -> float:
    """τ = log(w(t) − 1): the log-SNR log(t/(1−t)) up to 1 − t_eps, continued through the clamp (−inf at 0)."""
    if t <= 0.0:
        return -math.inf
    if t <= 1.0 - t_eps:
        return math.log(t) - math.log1p(-t)
    return math.log(clamp_weight(t, t_eps) - 1.0)


def multistep_update(
    z: torch.Tensor,
    preds: Sequence[torch.Tensor],
    times: Sequence[float],
    t_next: float,
    t_eps: float,
    order: int,
    start: float | None = None,
) -> torch.Tensor:
    """One step of (2) from ``start`` (default ``times[0]``) to ``t_next`` through the first ``order``
    predictions.

    ``preds``: x̂ at ``times``, newest first (``preds[0]`` = x̂(z, times[0])); ``z`` is the state at ``start``.
    Returns z at ``t_next``. The corrector passes ``start`` = the previous step's time and ``times[0]`` =
    ``t_next``: the step redone through the new prediction at its end.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, found {order}")
    p = min(order, len(preds), len(times))
    s = times[0] if start is None else start
    a, weights = lagrange_weights(list(times[:p]), s, t_next, t_eps)
    z_next = a * z
    for w, x in zip(weights, preds[:p]):
        z_next = z_next + w * x
    return z_next


def order_note(method: str, steps: int) -> str | None:
    """Why a solver with ``steps`` steps stays below its nominal order (None when it reaches it)."""
    if method == "heun" and steps < 2:
        return "heun with 1 step is a single Euler step (its last step is always Euler); use 2 or more steps"
    order = MULTISTEP_ORDER.get(method)
    if order is None:
        return None
    # step k (0-based) interpolates through min(p, k + 1) predictions; the last step through at most FINAL_ORDER
    need = order if order <= FINAL_ORDER else order + 1
    if steps >= need:
        return None
    reached = max(min(order, steps - 1), min(order, FINAL_ORDER, steps))
    return (
        f"{method} with {steps} step{'s' if steps > 1 else ''} reaches order {reached} only (step k interpolates "
        f"through the k+1 predictions it has and the last step through at most {FINAL_ORDER}); use {need} or "
        f"more steps for order {order}"
    )


def _w_moments(a: float, b: float, s: float, t_eps: float, n: int) -> list[float]:
    """[∫_a^b (u − s)^m·w(u) du for m = 0 … n−1] on a piece [a, b] on one side of the clamp edge 1 − t_eps."""
    edge = 1.0 - t_eps
    out = []
    if b <= edge:  # w = 1/σ, σ = 1 − u, u − s = σ_s − σ: expand (σ_s − σ)^m binomially
        sa, sb, ss = 1.0 - a, 1.0 - b, 1.0 - s
        log_ratio = math.log1p((b - a) / sb)  # ∫_a^b du/(1−u) = log(σ_a/σ_b)
        for m in range(n):
            acc = ss**m * log_ratio
            for i in range(1, m + 1):  # ∫ σ^{i−1} dσ over [σ_b, σ_a] = (σ_a^i − σ_b^i)/i
                acc += math.comb(m, i) * ss ** (m - i) * (-1) ** i * (sa**i - sb**i) / i
            out.append(acc)
        return out
    # w = e^{(u−edge)/t_eps}/t_eps, w' = w/t_eps: by parts K_m = [t_eps (u−s)^m w]_a^b − m t_eps K_{m−1}
    wa, wb = clamp_weight(a, t_eps), clamp_weight(b, t_eps)
    prev = 0.0
    for m in range(n):
        k_m = t_eps * ((b - s) ** m * wb - (a - s) ** m * wa) - m * t_eps * prev
        out.append(k_m)
        prev = k_m
    return out


def t_moments(s: float, t: float, t_eps: float, n: int = 3) -> tuple[float, list[float]]:
    """(a, [M_0 … M_{n−1}]): a = w_s/w_t and M_m = (1/w_t) ∫_s^t (u − s)^m dw(u), exactly (clamp included)."""
    edge = 1.0 - t_eps
    pieces = [(s, t)] if (t <= edge or s >= edge) else [(s, edge), (edge, t)]
    j = [0.0] * n
    for lo, hi in pieces:
        j = [x + y for x, y in zip(j, _w_moments(lo, hi, s, t_eps, n))]
    w_s, w_t = clamp_weight(s, t_eps), clamp_weight(t, t_eps)
    dt = t - s
    # by parts: ∫ (u−s)^m dw = (t−s)^m·w_t − m ∫ (u−s)^{m−1} w du  (m = 0: w_t − w_s)
    moments = [1.0 - w_s / w_t] + [dt**m - m * j[m - 1] / w_t for m in range(1, n)]
    return w_s / w_t, moments


def lagrange_weights(nodes: Sequence[float], s: float, t: float, t_eps: float) -> tuple[float, list[float]]:
    """(a, W): z_t = a·z_s + Σ_j W_j·x̂(nodes[j]) integrates (1) exactly when x̂ is a polynomial in u of degree
    < len(nodes) through the nodes (any times, before or after s)."""
    n = len(nodes)
    a, moments = t_moments(s, t, t_eps, n)
    weights = []
    for j, uj in enumerate(nodes):
        # ℓ_j(u) = Π_{m≠j} (u − u_m)/(u_j − u_m) as a polynomial in q = u − s: coefficients c[0..n−1]
        c = [1.0]
        den = 1.0
        for m, um in enumerate(nodes):
            if m == j:
                continue
            r = um - s  # factor (q − r)
            c = [(c[i - 1] if i > 0 else 0.0) - r * (c[i] if i < len(c) else 0.0) for i in range(len(c) + 1)]
            den *= uj - um
        weights.append(sum(ci * mi for ci, mi in zip(c, moments)) / den)
    return a, weights
