"""Guiders: how each denoising step combines several denoiser evaluations (see :mod:`kernel.guidance`)."""

from kernel_guiders.apg import AdaptiveProjectedGuidance
from kernel_guiders.cfg import ClassifierFreeGuidance, TrueClassifierFreeGuidance, rescale_noise_cfg
from kernel_guiders.pag import PAGMixin, PerturbedAttentionGuidance, perturbed_attention, select_self_attention
from kernel_guiders.slg import SkipLayerGuidance

__all__ = [
    "AdaptiveProjectedGuidance",
    "ClassifierFreeGuidance",
    "PAGMixin",
    "PerturbedAttentionGuidance",
    "SkipLayerGuidance",
    "TrueClassifierFreeGuidance",
    "perturbed_attention",
    "rescale_noise_cfg",
    "select_self_attention",
]
