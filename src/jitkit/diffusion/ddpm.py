"""The ε-prediction DDPM (Ho et al. 2020) used by the toy DiT baseline of the shapes study.

Discrete forward process over T steps (t = 0 … T−1 here; the paper's t = 1 … T):

    β_t      linear from β_start to β_end           (1e-4 … 0.02 in Ho et al.)
    α_t      = 1 − β_t,    ᾱ_t = ∏_{s ≤ t} α_s
    q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I)       x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε

Training: t uniform on {0, …, T−1}, loss = mean ‖ε − ε̂(x_t, t)‖² ("L_simple").

Ancestral sampling (reverse process), from x_{T−1} ~ N(0, I) down to t = 0:

    μ_θ(x_t, t) = (x_t − β_t/√(1 − ᾱ_t) · ε̂) / √α_t
    x_{t−1}     = μ_θ + σ_t · z,   z ~ N(0, I),   no noise at the last step (t = 0)
    σ_t²        = β̃_t = β_t · (1 − ᾱ_{t−1})/(1 − ᾱ_t)     (posterior variance, ``variance="posterior"``)
                  or β_t                                      (``variance="beta"``)

Note the time convention is opposite to the flow path of ``jitkit.diffusion.flow`` (there t = 1 is data,
here t = 0 is data); this module is self-contained and only the DiT baseline uses it.

Shape key: B batch; x0, eps, x_t are [B, ...]; t is [B] int64 in [0, T).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

# eps_fn(x_t [B,...], t [B] int64, y [B]) -> ε̂ [B,...]
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) shaped like ``like``, drawn on the generator's device (if any) and moved to like's."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


class DDPMSchedule(nn.Module):
    """The tables of a linear-β (or, ``kind="cosine"``, Nichol & Dhariwal's cosine) DDPM as (non-persistent, float64-computed, float32-stored) buffers.

    ``betas``, ``alphas``, ``alphas_cumprod`` (ᾱ_t), ``alphas_cumprod_prev`` (ᾱ_{t−1}, with ᾱ_{−1} = 1),
    ``posterior_variance`` (β̃_t) — all of length T.
    """

    def __init__(
        self, T: int = 200, beta_start: float = 1e-4, beta_end: float = 0.02, kind: str = "linear"
    ) -> None:
        super().__init__()
        if T < 1:
            raise ValueError(f"DDPM needs T >= 1 steps, found T={T}")
        if not (0.0 < beta_start <= beta_end < 1.0):
            raise ValueError(
                f"DDPM betas must satisfy 0 < beta_start <= beta_end < 1, found {beta_start} and {beta_end}"
            )
        if kind not in ("linear", "cosine"):
            raise ValueError(f"DDPM schedule kind must be linear or cosine, found {kind!r}")
        self.T = T
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.kind = kind
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        else:  # Nichol & Dhariwal (2021): ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2)/ᾱ(0), s = 0.008, β ≤ 0.999
            s = 0.008
            f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        for name, val in (
            ("betas", betas),
            ("alphas", alphas),
            ("alphas_cumprod", abar),
            ("alphas_cumprod_prev", abar_prev),
            ("posterior_variance", post_var),
        ):
            self.register_buffer(name, val.float(), persistent=False)

    def _at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] [B] → [B, 1, …, 1] on like's device and dtype."""
        v = table.to(like.device)[t.to(like.device)]
        return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε."""
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def sample_t(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None):
        """t uniform on {0, …, T−1}  → [n] int64."""
        return torch.randint(0, self.T, (n,), generator=generator, device=device)

    def loss(
        self,
        eps_fn: EpsFn,
        x0: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L_simple = mean over pixels and batch of (ε − ε̂(x_t, t, y))², t uniform, ε ~ N(0, I)."""
        dev = generator.device if generator is not None else x0.device
        t = self.sample_t(x0.shape[0], device=dev, generator=generator).to(x0.device)
        eps = _randn(x0, generator)
        xt = self.q_sample(x0, t, eps)
        return (eps_fn(xt, t, y).float() - eps.float()).pow(2).mean()

    def p_mean(self, x_t: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
        """μ_θ = (x_t − β_t/√(1 − ᾱ_t) · ε̂)/√α_t."""
        beta = self._at(self.betas, t, x_t)
        alpha = self._at(self.alphas, t, x_t)
        abar = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - beta / (1 - abar).sqrt() * eps_hat) / alpha.sqrt()

    def posterior_mean(
        self, x_t: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor, clip: float | None = 1.0
    ) -> torch.Tensor:
        """μ̃(x̂_0, x_t) = √ᾱ_{t−1}·β_t/(1 − ᾱ_t)·x̂_0 + √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t with x̂_0 from ε̂, clipped
        to [−clip, clip] (None: not clipped, and then μ̃ equals :meth:`p_mean`)."""
        x0 = self.predict_x0(x_t, t, eps_hat)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        beta, alpha = self._at(self.betas, t, x_t), self._at(self.alphas, t, x_t)
        abar, abar_prev = self._at(self.alphas_cumprod, t, x_t), self._at(self.alphas_cumprod_prev, t, x_t)
        return (abar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - abar_prev) * x_t) / (1 - abar)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) · ε̂)/√ᾱ_t (for trajectory plots)."""
        abar = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()

    @torch.no_grad()
    def sample(
        self,
        eps_fn: EpsFn,
        noise: torch.Tensor,
        y: torch.Tensor,
        *,
        variance: str = "posterior",
        generator: torch.Generator | None = None,
        trajectory: list | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling from x_{T−1} = ``noise`` to x_0 (T network evaluations).

        ``variance``: "posterior" (σ_t² = β̃_t), "beta" (σ_t² = β_t), "ddim" (DDIM with η = 0, Song et al.
        2021: x_{t−1} = √ᾱ_{t−1}·x̂_0 + √(1 − ᾱ_{t−1})·ε̂, deterministic) or "clipped" (σ_t² = β̃_t around the
        posterior mean of x̂_0 clipped to [−1, 1]: μ̃ = √ᾱ_{t−1}·β_t/(1 − ᾱ_t)·x̂_0 + √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t,
        Ho et al.'s sampler as most DDPM code runs it, e.g. diffusers' DDPMScheduler with its default
        ``clip_sample=True``; without the clip it equals "posterior"). ``generator``: the per-step noise.
        ``trajectory``: if a list, receives (t, x_t, x̂_0) for every step, from t = T−1 down to 0, and then
        (−1, x_0, x_0).
        """
        if variance not in ("posterior", "beta", "ddim", "clipped"):
            raise ValueError(f"variance must be 'posterior', 'beta', 'ddim' or 'clipped', found {variance!r}")
        var_table = self.betas if variance == "beta" else self.posterior_variance
        x = noise
        B = x.shape[0]
        for i, step in enumerate(range(self.T - 1, -1, -1)):
            t = torch.full((B,), step, dtype=torch.long, device=x.device)
            eps_hat = eps_fn(x, t, y).to(x.dtype)
            if trajectory is not None:
                trajectory.append((step, x.detach().clone(), self.predict_x0(x, t, eps_hat)))
            if variance == "ddim":
                abar_prev = self._at(self.alphas_cumprod_prev, t, x)
                x = abar_prev.sqrt() * self.predict_x0(x, t, eps_hat) + (1 - abar_prev).sqrt() * eps_hat
            else:
                mean = (
                    self.p_mean(x, t, eps_hat)
                    if variance != "clipped"
                    else self.posterior_mean(x, t, eps_hat)
                )
                x = mean + self._at(var_table, t, x).sqrt() * _randn(x, generator) if step > 0 else mean
            if on_step is not None:
                on_step(i + 1, self.T)
        if trajectory is not None:
            trajectory.append((-1, x.detach().clone(), x.detach().clone()))
        return x
