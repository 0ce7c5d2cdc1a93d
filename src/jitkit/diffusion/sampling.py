"""Samplers: integrate dz/dt = v(z, t) from noise (t = 0) to data (t = 1): Euler, Heun and the multistep
DPM-Solver++(2M)/(3M) of :mod:`jitkit.diffusion.solvers`, on a time grid of :mod:`jitkit.diffusion.grids`.

Classifier-free guidance:  v = v_u + s·(v_c − v_u),  s = cfg where low < t < high (low = 0: no lower bound),
else 1. The conditional and unconditional passes run as *one* batched forward; where s = 1 (outside the
interval, or cfg = 1) the unconditional pass is skipped entirely.

Times t_k = k/steps (k = 0 … steps) on the default ``uniform`` grid. As in the reference, the chosen step
(Heun or Euler) runs for k = 0 … steps−2 and a final Euler step goes from t_{steps−1} to 1. Every solver takes
one step function (:func:`make_stepper`), which ODE inversion (:mod:`jitkit.diffusion.inversion`) inverts.

Shape key: B batch; z [B, C, S, S]; y [B].
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from jitkit.config import SAMPLERS, SamplerConfig
from jitkit.diffusion.grids import time_grid
from jitkit.diffusion.solvers import CORRECTED, FINAL_ORDER, MULTISTEP_ORDER, multistep_update, order_note

# velocity_fn(z [B',...], t [B'], y [B']) -> v [B',...]
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Trajectory:
    """What a sampler saw: ``t`` [K+1] times, ``z`` [K+1, B, …] states (z[K] is the output) and ``x`` [K, B, …]
    the guided clean-image prediction x̂ = z + max(1 − t, t_eps)·v at each step's starting point."""

    t: list[float] = field(default_factory=list)
    z: list[torch.Tensor] = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.tensor(self.t), torch.stack(self.z), torch.stack(self.x)


def _float32(v: float) -> float:
    """``v`` rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def guidance_scale(t: float, cfg: float, interval: tuple[float, float]) -> float:
    """s = cfg where t < high and (low == 0 or t > low), else 1.

    Compared in float32, as the reference does (its t is a float32 tensor; torch compares it with a Python
    bound in the tensor's dtype): on the uniform grid t_k = float32(k/K), so where a grid time meets a bound —
    t = 0.1 with 10 or 50 steps and the interval [0.1, 1] — it is *outside* the interval, as in the reference.
    In float64 the same time, 0.10000000149…, would be above 0.1 and get guidance (and a second pass).
    """
    low, high = interval
    t32, low32, high32 = _float32(t), _float32(low), _float32(high)
    return cfg if (t32 < high32 and (low == 0 or t32 > low32)) else 1.0


def guided_velocity(
    velocity_fn: VelocityFn, z: torch.Tensor, t: float, y: torch.Tensor, null_class: int, scale: float
) -> torch.Tensor:
    """v_u + s·(v_c − v_u) with both passes in one forward; a single conditional pass when s == 1."""
    B = z.shape[0]
    if scale == 1.0:
        return velocity_fn(z, torch.full((B,), t, device=z.device, dtype=z.dtype), y)
    z2 = torch.cat([z, z], dim=0)  # [2B,...]
    t2 = torch.full((2 * B,), t, device=z.device, dtype=z.dtype)
    y2 = torch.cat([y, torch.full_like(y, null_class)], dim=0)
    v_c, v_u = velocity_fn(z2, t2, y2).chunk(2, dim=0)
    return v_u + scale * (v_c - v_u)


StepFn = Callable[[int, torch.Tensor, Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def make_stepper(
    method: str,
    ts: Sequence[float],
    vel: Callable[[torch.Tensor, float], torch.Tensor],
    t_eps: float = 0.05,
) -> StepFn:
    """The steps of solver ``method`` on the grid ``ts``: ``step(k, z, preds) -> (z at ts[k+1], x̂ at ts[k])``.

    ``vel(z, t)``: the (guided) velocity. ``preds``: the x̂ of the earlier steps, newest first (used by the
    multistep solvers only). x̂ = z + max(1 − t, t_eps)·v is the clean-image prediction the velocity came from.
    Euler and Heun are the reference's: Heun for k = 0 … K−2, then one Euler step into t = 1.
    The ``-pc`` solvers correct the state a step starts from before stepping on (the stepper keeps the state
    of the step before: one stepper per integration, steps in order).
    """
    K = len(ts) - 1
    if method in ("euler", "heun"):

        def step(k: int, z: torch.Tensor, preds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            t, t_next = ts[k], ts[k + 1]
            dt = t_next - t
            v1 = vel(z, t)
            x = z + max(1.0 - t, t_eps) * v1
            if method == "heun" and k < K - 1:
                z_e = z + dt * v1
                v2 = vel(z_e, t_next)
                return z + dt * 0.5 * (v1 + v2), x
            return z + dt * v1, x

        return step
    if method not in MULTISTEP_ORDER:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, found {method!r}")
    order = MULTISTEP_ORDER[method]
    update = multistep_update
    corrected = method in CORRECTED
    before: list[torch.Tensor] = []  # the corrector's: the (corrected) state at ts[k − 1]

    def mstep(k: int, z: torch.Tensor, preds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        t = ts[k]
        x = z + max(1.0 - t, t_eps) * vel(z, t)
        if corrected:
            if k > 0 and before:  # redo step k − 1 through x̂ at its end (jitkit.diffusion.solvers, Corrector)
                q = min(order, k + 1, len(preds) + 1)
                z = update(
                    before[0], [x, *preds], [ts[k - j] for j in range(q)], t, t_eps, q, start=ts[k - 1]
                )
            before[:] = [z]
        p = min(order, FINAL_ORDER) if k == K - 1 else order  # a stable last step (jitkit.diffusion.solvers)
        p = min(p, k + 1, len(preds) + 1)
        times = [ts[k - j] for j in range(p)]
        return update(z, [x, *preds], times, ts[k + 1], t_eps, p), x

    return mstep


@torch.no_grad()
def sample(
    velocity_fn: VelocityFn,
    z0: torch.Tensor,
    y: torch.Tensor,
    cfg: SamplerConfig,
    null_class: int,
    *,
    t_eps: float = 0.05,
    trajectory: Trajectory | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate from z0 (noise at t = 0) to t = 1 with ``cfg.method`` on the time grid ``cfg.time_grid`` and return the
    final state (an image in about [−1, 1]).

    ``trajectory``: filled in place with every state and x-prediction (for plots and the demo).
    ``on_step(k, steps)``: called after each step (progress bars).
    """
    steps = cfg.steps
    ts = time_grid(cfg.time_grid, steps)  # python floats: no device syncs in the loop
    interval = (float(cfg.interval[0]), float(cfg.interval[1]))

    def vel(z: torch.Tensor, t: float) -> torch.Tensor:
        return guided_velocity(velocity_fn, z, t, y, null_class, guidance_scale(t, cfg.cfg, interval))

    step = make_stepper(cfg.method, ts, vel, t_eps)
    z = z0
    preds: list[torch.Tensor] = []  # x̂ of the earlier steps, newest first (multistep solvers)
    for k in range(steps):
        z_next, x = step(k, z, preds)
        if trajectory is not None:
            trajectory.t.append(ts[k])
            trajectory.z.append(z.detach().clone())
            trajectory.x.append(x)
        if cfg.method in MULTISTEP_ORDER:
            preds = [x, *preds[: MULTISTEP_ORDER[cfg.method] - 1]]
        z = z_next
        if on_step is not None:
            on_step(k + 1, steps)
    if trajectory is not None:
        trajectory.t.append(ts[-1])
        trajectory.z.append(z.detach().clone())
    return z


def network_evaluations(cfg: SamplerConfig) -> int:
    """Number of velocity evaluations (each a forward of B or 2B images) a sampler run makes."""
    return 2 * (cfg.steps - 1) + 1 if cfg.method == "heun" else cfg.steps


def initial_noise(
    n: int,
    shape: tuple[int, ...],
    noise_scale: float = 1.0,
    seed: int | None = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """noise_scale · N(0, I) of shape [n, *shape], drawn on the CPU from ``seed`` so that a seed gives the
    same images on every device."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.randn((n, *shape), generator=g) * noise_scale).to(device)


def to_uint8(z: torch.Tensor) -> torch.Tensor:
    """[−1, 1] floats → uint8 images: round(clip((z + 1)/2·255))."""
    return ((z.float() + 1) / 2 * 255).clamp(0, 255).round().to(torch.uint8)


def sampling_cost(cfg: SamplerConfig) -> str:
    """A one-line description of the work per image: the solver, its steps and network evaluations, the grid
    when it is not the uniform one, cfg, and why the solver runs below its order when the steps are too few."""
    grid = cfg.time_grid
    text = (
        f"{cfg.method} {cfg.steps} steps ({network_evaluations(cfg)} network evaluations)"
        f"{'' if grid == 'uniform' else f', {grid} grid'}, cfg {cfg.cfg}"
    )
    note = order_note(cfg.method, cfg.steps)
    return f"{text} [note: {note}]" if note else text
