"""One sampling run recorded step by step, as uint8 images ready for the page.

The sampler integrates dz/dt = v from noise (t = 0) to data (t = 1) on its time grid (t_k = k/K unless the
sampler's ``time_grid`` says otherwise). At every step's
starting point it records the state z_{t_k} and the guided clean-image prediction

    x̂_k = z_{t_k} + max(1 − t_k, t_eps) · v(z_{t_k}, t_k),

which for an x-predicting JiT is (up to the t_eps clamp) the network's own output. The last step is an Euler
step of length 1/K from t_{K−1}, so the final image z_1 = z + (1/K)·v equals the last x̂ exactly when
1/K ≥ t_eps (K ≤ 20 for t_eps = 0.05); for more steps it differs slightly and the page says by how much.

The run goes through ``jitkit.diffusion.generate.sample_denoiser``, the sampler every other path uses (the
null class and t_eps come from the Denoiser); its starting noise is ``initial_noise(seed=seed)``.

Shape key: K steps; C channels; S image side; frames are uint8 [S, S, 3] (height, width, RGB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.flow import Denoiser
from jitkit.diffusion.generate import sample_denoiser
from jitkit.diffusion.sampling import Trajectory, guidance_scale, initial_noise, network_evaluations, to_uint8


@dataclass
class RecordedRun:
    """A whole sampling run: ``t`` [K+1], ``z`` uint8 [K+1, S, S, 3] (z[K] is the final image),
    ``x`` uint8 [K, S, S, 3] the x-prediction at each step, ``x_rms`` [K] the RMS distance of x̂_k to the
    final image in model units ([−1, 1] pixels), ``scale`` [K] the guidance scale used at each step."""

    t: list[float]
    z: np.ndarray
    x: np.ndarray
    x_rms: list[float]
    scale: list[float]
    nfe: int

    @property
    def final(self) -> np.ndarray:
        return self.z[-1]

    @property
    def last_x_max_abs_diff(self) -> int:
        """max |x̂_{K−1} − final| in uint8 levels (0 when the last step lands on the last prediction)."""
        return int(np.abs(self.x[-1].astype(np.int16) - self.final.astype(np.int16)).max())


def _to_hwc_rgb(img: torch.Tensor) -> np.ndarray:
    """[C,S,S] float in [−1, 1] → uint8 [S,S,3] (a single channel is repeated as grey)."""
    u8 = to_uint8(img.detach().cpu())  # [C,S,S]
    if u8.shape[0] == 1:
        u8 = u8.expand(3, -1, -1)
    elif u8.shape[0] != 3:
        u8 = u8[:3]
    return u8.permute(1, 2, 0).contiguous().numpy()  # [S,S,3]


def record_run(
    denoiser: Denoiser,
    *,
    class_index: int,
    seed: int,
    sampler: SamplerConfig,
    img_size: int,
    in_channels: int = 3,
    precision: str = "auto",
    z0: torch.Tensor | None = None,
) -> RecordedRun:
    """Sample one image of ``class_index`` from the noise of ``seed`` (or from ``z0`` [1, C, S, S], e.g. the
    inversion of a data image) and record every step.

    ``precision``: auto | fp32 | bf16 | fp16, the network's autocast (the sampler state stays float32).
    """
    param = next(denoiser.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if z0 is None:
        z0 = initial_noise(
            1, (in_channels, img_size, img_size), denoiser.cfg.noise_scale, seed=seed, device=device
        )
    else:
        z0 = z0.to(device=device, dtype=torch.float32)
    y = torch.tensor([class_index], dtype=torch.long, device=device)
    traj = Trajectory()
    sample_denoiser(denoiser, z0, y, sampler, precision=precision, trajectory=traj)
    final = traj.z[-1][0].float()
    z = np.stack([_to_hwc_rgb(s[0]) for s in traj.z])  # [K+1,S,S,3]
    x = np.stack([_to_hwc_rgb(s[0]) for s in traj.x])  # [K,S,S,3]
    x_rms = [float(torch.sqrt(((s[0].float() - final) ** 2).mean())) for s in traj.x]
    interval = (float(sampler.interval[0]), float(sampler.interval[1]))
    scale = [guidance_scale(t, sampler.cfg, interval) for t in traj.t[:-1]]
    return RecordedRun(
        t=[float(t) for t in traj.t],
        z=z,
        x=x,
        x_rms=[r if math.isfinite(r) else -1.0 for r in x_rms],
        scale=scale,
        nfe=network_evaluations(sampler),
    )
