"""ODE inversion: the noise z_0 from which a sampler regenerates a given image.

Sampling integrates dz/dt = v from t = 0 to 1 with a solver's steps z_{k+1} = F_k(z_k); inversion runs the
same grid backwards (t from 1 to 0) and solves each step for its start,

    find z_k with F_k(z_k) = z_{k+1},      k = K−1, …, 0,

so that sampling from the result with the same solver, grid, class and guidance lands on the image again
(exactly when the iterations below have converged). Why implicit: an x-prediction network carries no
information about the noise at t = 1 (the velocity there, (x̂ − z)/t_eps, is about zero for a clean image),
so an explicit backward step from t = 1 would not move. Each step is solved by the fixed-point iteration

    z ← z + (z_{k+1} − F_k(z)),    starting from z = z_{k+1},

whose first iterate is the familiar "DDIM inversion" (the model evaluated at the known, cleaner state) and
whose later iterates remove its error (per image, only while the forward step of the iterate gets closer
to the target: see ``_solve_step``). The iteration converges where the step is close to the identity
plus a contraction, i.e. ‖(1 − a)(I − ∂x̂/∂z)‖ < 1 with a the step's decay factor; directions the forward
flow squeezes together (the model's ∂x̂/∂z ≈ 0) converge slowly, and in the limit cannot be recovered —
the reconstruction error reported by ``jitkit invert`` measures this.

Multistep solvers (DPM-Solver++(2M)/(3M)) also need the x̂ of the steps before, which a backward pass
reaches only later: the first sweep inverts first-order steps (DDIM/Euler), later sweeps use the previous
sweep's x̂ as the history (Gauss–Seidel), converging to the exact inverse of the multistep sampler. Each
sweep carries the correction one step further towards t = 0, so exactness needs about as many sweeps as
steps (on a Gaussian flow with 8 steps every sweep removes 40–60 % of the error); the default 2 sweeps are
a compromise, the reconstruction error that remains is reported.

Shape key: B batch; x, z [B, C, S, S]; y [B].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.grids import time_grid
from jitkit.diffusion.sampling import VelocityFn, guidance_scale, guided_velocity, make_stepper
from jitkit.diffusion.solvers import CORRECTED, MULTISTEP_ORDER

__all__ = ["default_sweeps", "invert", "invertible_method", "inversion_evaluations"]


def invertible_method(method: str) -> str:
    """The solver to invert with where ``method`` is a run's default: a ``-pc`` solver's predictor (the corrector
    is not invertible step by step), else ``method`` itself."""
    return CORRECTED.get(method, method)


def default_sweeps(method: str) -> int:
    """Backward sweeps used by default: 1 for one-step solvers, 2 for multistep ones."""
    return 2 if method in MULTISTEP_ORDER else 1


def inversion_evaluations(cfg: SamplerConfig, iters: int, sweeps: int | None = None) -> int:
    """Velocity evaluations of :func:`invert`: sweeps × steps × iters × (2 for Heun's steps but the last)."""
    sweeps = default_sweeps(cfg.method) if sweeps is None else sweeps
    per_sweep = (2 * (cfg.steps - 1) + 1) if cfg.method == "heun" else cfg.steps
    return sweeps * iters * per_sweep


def _rms(a: torch.Tensor) -> torch.Tensor:
    return a.float().pow(2).flatten(1).mean(dim=1).sqrt()  # [B]


def _solve_step(
    step: Callable, k: int, z: torch.Tensor, target: torch.Tensor, hist: list[torch.Tensor], iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve F_k(z) = target by the fixed-point iteration, per image keeping the iterate whose forward step
    lands closest to the target: an image stops once an iterate does not get closer (where the forward step
    discards a direction, e.g. a flat background, the plain iteration would drift along it forever)."""
    B = z.shape[0]
    view = (B,) + (1,) * (z.dim() - 1)
    best_z, best_res, best_x = z, torch.full((B,), float("inf"), device=z.device), None
    active = torch.ones(B, dtype=torch.bool, device=z.device)
    for it in range(iters):
        z_fwd, x = step(k, z, hist)
        res = _rms(target - z_fwd)
        better = active & (res < best_res) if it > 0 else active
        keep = better.view(view)
        best_z, best_x = torch.where(keep, z, best_z), x if best_x is None else torch.where(keep, x, best_x)
        best_res = torch.where(better, res, best_res)
        active = better
        if not bool(active.any()):
            return best_z, best_x
        z = torch.where(active.view(view), z + (target - z_fwd), best_z)
    # the last update is unverified (verifying it costs one more step); it continues an improving sequence
    return torch.where(active.view(view), z, best_z), best_x


@torch.no_grad()
def invert(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: SamplerConfig,
    null_class: int,
    *,
    t_eps: float = 0.05,
    iters: int = 4,
    sweeps: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The noise z_0 [B, C, S, S] from which ``sample`` (same ``cfg``, labels ``y``) makes ``x`` (images in [−1, 1]).

    ``iters``: fixed-point iterations per step (each one velocity evaluation, two for a Heun step);
    ``sweeps``: backward passes (default :func:`default_sweeps`). ``on_step(k, total)`` after each step.
    """
    if cfg.method in CORRECTED:
        raise ValueError(
            f"sampler {cfg.method} cannot be inverted step by step (its corrector redoes each step with the "
            f"evaluation at the next state); invert with {CORRECTED[cfg.method]}, the same solver without the "
            "corrector, and sample from the noise with it"
        )
    if iters < 1:
        raise ValueError(f"iters must be >= 1, found {iters}")
    sweeps = default_sweeps(cfg.method) if sweeps is None else int(sweeps)
    if sweeps < 1:
        raise ValueError(f"sweeps must be >= 1, found {sweeps}")
    steps = cfg.steps
    ts = time_grid(cfg.time_grid, steps)
    interval = (float(cfg.interval[0]), float(cfg.interval[1]))

    def vel(z: torch.Tensor, t: float) -> torch.Tensor:
        return guided_velocity(velocity_fn, z, t, y, null_class, guidance_scale(t, cfg.cfg, interval))

    step = make_stepper(cfg.method, ts, vel, t_eps)
    history = MULTISTEP_ORDER.get(cfg.method, 1) - 1  # earlier predictions a step uses
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()  # the state: float32 (or 64)
    zs: list[torch.Tensor | None] = [None] * steps + [x]
    preds: list[torch.Tensor | None] = [None] * steps  # x̂_k = x̂(z_k, t_k) of the last sweep
    done, total = 0, sweeps * steps
    for _ in range(sweeps):
        for k in reversed(range(steps)):
            hist: list[torch.Tensor] = []
            for j in range(1, history + 1):  # x̂_{k−1}, x̂_{k−2}, … as far as the last sweep reached
                p = preds[k - j] if k - j >= 0 else None
                if p is None:
                    break
                hist.append(p)
            target = zs[k + 1]
            assert target is not None
            z = target if zs[k] is None else zs[k]
            z, xk = _solve_step(step, k, z, target, hist, iters)
            zs[k], preds[k] = z, xk
            done += 1
            if on_step is not None:
                on_step(done, total)
    out = zs[0]
    assert out is not None
    return out
