"""The diffusion math: the flow-matching objective, samplers and the DDPM baseline."""

from jitkit.diffusion.flow import Denoiser, convert, flow_loss, interpolate, sample_t
from jitkit.diffusion.sampling import Trajectory, guided_velocity, initial_noise, sample, to_uint8

__all__ = [
    "Denoiser",
    "Trajectory",
    "convert",
    "flow_loss",
    "guided_velocity",
    "initial_noise",
    "interpolate",
    "sample",
    "sample_t",
    "to_uint8",
]
