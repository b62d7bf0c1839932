"""DEIS: Diffusion Exponential Integrator Sampler (Zhang & Chen 2023)."""

from .deis import DEISMultistepScheduler

__all__ = ["DEISMultistepScheduler"]
