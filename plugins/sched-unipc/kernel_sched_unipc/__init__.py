"""UniPC: unified predictor-corrector sampler (Zhao et al. 2023)."""

from .unipc import UniPCMultistepScheduler

__all__ = ["UniPCMultistepScheduler"]
