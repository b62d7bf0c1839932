"""Classifier-free guidance (Ho & Salimans, arXiv:2207.12598) and its variants' shared parts.

``pred = uncond + scale * (cond - uncond)`` (the form every Diffusers pipeline uses; with
``use_original_formulation`` the paper's ``cond + scale * (cond - uncond)``), optionally rescaled
toward the conditional prediction's standard deviation (Lin et al., arXiv:2305.08891, section 3.4)
and limited to a ``[start, stop)`` window of the steps, which replaces the "CFG cut-off" step-end
callbacks with a setting.
"""

from __future__ import annotations

from typing import Mapping

import torch

from kernel.config import register_to_config
from kernel.guidance import NEGATIVE, POSITIVE, BaseGuidance, GuidancePass, GuidanceStep, check_scale, check_window

COND, UNCOND = "pred_cond", "pred_uncond"


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor,
                      guidance_rescale: float = 0.0) -> torch.Tensor:
    """Match the guided prediction's std to the conditional one's, then blend by ``guidance_rescale``."""
    dims = list(range(1, noise_pred_text.ndim))
    rescaled = noise_cfg * (noise_pred_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


class ClassifierFreeGuidance(BaseGuidance):
    """Two evaluations per step (negative and positive prompt) combined linearly.

    Active when ``guidance_scale > 1`` (``> 0`` with ``use_original_formulation``), ``enabled`` and the
    step lies in ``[start, stop)`` (fractions of the steps); otherwise one positive evaluation is used
    as is.  The "> 1" rule is the pipelines' (Diffusers' modular guider also guides below 1).
    """

    neutral_config = {"guidance_scale": 1.0}

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True):
        check_scale("guidance_scale", guidance_scale, minimum=None)
        check_scale("guidance_rescale", guidance_rescale)
        check_window(start, stop)
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation
        self.start, self.stop, self.enabled = start, stop, enabled

    @property
    def uses_negative(self) -> bool:
        neutral = 0.0 if self.use_original_formulation else 1.0
        return self.enabled and self.guidance_scale > neutral

    def _cfg_active(self, step: GuidanceStep) -> bool:
        return self.uses_negative and step.has_negative and step.within(self.start, self.stop)

    def _cfg_passes(self, step: GuidanceStep) -> list[GuidancePass]:
        if self._cfg_active(step):
            return [GuidancePass(UNCOND, NEGATIVE), GuidancePass(COND, POSITIVE)]
        return [GuidancePass(COND, POSITIVE)]

    def passes(self, step: GuidanceStep) -> list[GuidancePass]:
        return self._cfg_passes(step)

    def _cfg(self, predictions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cond = predictions[COND]
        if UNCOND not in predictions:
            return cond
        uncond = predictions[UNCOND]
        base = cond if self.use_original_formulation else uncond
        return base + self.guidance_scale * (cond - uncond)

    def _rescale(self, pred: torch.Tensor, predictions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.guidance_rescale > 0.0 and UNCOND in predictions:
            return rescale_noise_cfg(pred, predictions[COND], self.guidance_rescale)
        return pred

    def combine(self, predictions: Mapping[str, torch.Tensor], step: GuidanceStep) -> torch.Tensor:
        return self._rescale(self._cfg(predictions), predictions)


class TrueClassifierFreeGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance that runs the negative and positive prompts as separate calls.

    For prompts whose embeddings differ in length, and for guidance-distilled models such as
    Flux.1-dev, whose ``true_cfg_scale`` adds real CFG on top of the embedded guidance.
    """

    batched = False
