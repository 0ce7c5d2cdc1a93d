"""jitkit: train, sample and evaluate JiT pixel-space diffusion transformers on any hardware."""

__version__ = "0.1.0"
