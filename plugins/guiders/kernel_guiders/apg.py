"""Adaptive Projected Guidance (Sadat et al., "Eliminating Oversaturation and Artifacts of High
Guidance Scales in Diffusion Models", arXiv:2410.02416).

The guidance update ``cond - uncond`` is (optionally) accumulated with negative momentum, clipped
to a norm of ``adaptive_projected_guidance_rescale``, and split into the part parallel to the
conditional prediction and the orthogonal rest; the parallel part, which oversaturates, is
weighted by ``eta``.  Arguments and arithmetic follow Diffusers' ``AdaptiveProjectedGuidance``.
"""

from __future__ import annotations

from typing import Mapping

import torch

from kernel.config import register_to_config
from kernel.guidance import GuidanceStep, check_scale

from kernel_guiders.cfg import COND, UNCOND, ClassifierFreeGuidance


def project(update: torch.Tensor, direction: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(parallel, orthogonal)`` parts of ``update`` relative to ``direction`` over ``dims``, in float64."""
    v0, v1 = update.double(), torch.nn.functional.normalize(direction.double(), dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    return parallel.to(update.dtype), (v0 - parallel).to(update.dtype)


class AdaptiveProjectedGuidance(ClassifierFreeGuidance):
    """APG: CFG with the guidance update norm-clipped and its parallel component down-weighted."""

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, adaptive_projected_guidance_momentum: float | None = None,
                 adaptive_projected_guidance_rescale: float = 15.0, eta: float = 1.0, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True):
        super().__init__(guidance_scale, guidance_rescale, use_original_formulation, start, stop, enabled)
        if adaptive_projected_guidance_momentum is not None:
            check_scale("adaptive_projected_guidance_momentum", adaptive_projected_guidance_momentum, minimum=None)
        check_scale("adaptive_projected_guidance_rescale", adaptive_projected_guidance_rescale)
        check_scale("eta", eta, minimum=None)
        self.momentum = adaptive_projected_guidance_momentum
        self.norm_threshold = adaptive_projected_guidance_rescale
        self.eta = eta
        self._running = None

    def reset(self) -> None:
        self._running = None

    def _cfg(self, predictions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cond = predictions[COND]
        if UNCOND not in predictions:
            return cond
        diff = cond - predictions[UNCOND]
        dims = [-i for i in range(1, diff.ndim)]
        if self.momentum is not None:
            self._running = diff if self._running is None else diff + self.momentum * self._running
            diff = self._running
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / norm)
        parallel, orthogonal = project(diff, cond, dims)
        base = cond if self.use_original_formulation else predictions[UNCOND]
        return base + self.guidance_scale * (orthogonal + self.eta * parallel)

    def combine(self, predictions: Mapping[str, torch.Tensor], step: GuidanceStep) -> torch.Tensor:
        return self._rescale(self._cfg(predictions), predictions)
