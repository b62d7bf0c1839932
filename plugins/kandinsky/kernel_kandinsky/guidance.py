"""Guidance for denoisers that also predict their variance (improved DDPM, Nichol & Dhariwal, arXiv:2102.09672).

Kandinsky 2.2's UNet outputs ``2 * C`` channels: the noise and, in the second half, the interpolation
weight of a learned variance.  Only the noise is guided; the variance is the positive pass's, and it is
dropped when the scheduler does not learn variances.  :class:`VarianceSplitGuidance` wraps whatever
guider the call uses (CFG from ``guidance_scale``, or the one set as ``pipe.guider``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from kernel.guidance import POSITIVE, GuidanceStep


def unscaled_model_input(pipe, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The engine's ``_scale_model_input`` for every Kandinsky pipeline: Diffusers' Kandinsky pipelines never call
    ``scheduler.scale_model_input``, so the latents go to the denoiser unscaled whatever the scheduler."""
    return latents

LEARNED_VARIANCE = ("learned", "learned_range")


def learns_variance(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` uses a predicted variance (its ``variance_type`` is learned)."""
    return getattr(scheduler.config, "variance_type", None) in LEARNED_VARIANCE


class VarianceSplitGuidance:
    """Guides the first ``channels`` of each prediction; keeps the positive pass's other channels or drops them."""

    def __init__(self, inner: Any, channels: int, keep_variance: bool):
        self.inner, self.channels, self.keep_variance = inner, channels, keep_variance
        self._positive: str | None = None

    @property
    def uses_negative(self) -> bool:
        return self.inner.uses_negative

    @property
    def batched(self) -> bool:
        return getattr(self.inner, "batched", True)

    def reset(self) -> None:
        self.inner.reset()

    def passes(self, step: GuidanceStep):
        passes = self.inner.passes(step)
        self._positive = next((p.name for p in passes if p.conditioning == POSITIVE), passes[0].name)
        return passes

    def combine(self, predictions: Mapping[str, torch.Tensor], step: GuidanceStep) -> torch.Tensor:
        c = self.channels
        guided = self.inner.combine({k: v[:, :c] for k, v in predictions.items()}, step)
        variance = predictions[self._positive][:, c:]
        if not self.keep_variance or variance.shape[1] == 0:
            return guided
        return torch.cat([guided, variance], dim=1)
