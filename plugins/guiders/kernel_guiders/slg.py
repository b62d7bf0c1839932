"""Skip-layer guidance (Stability AI's SD3.5 recipe): push the prediction away from one made with
some transformer blocks skipped, inside a window of the steps.

``pred = cfg + skip_layer_guidance_scale * (cond - cond_skipped)``, the skipped prediction coming
from a positive-prompt evaluation with ``skip_layers=skip_layer_guidance_layers`` passed to the
denoiser (SD3's transformer takes it).  The window is the SD3 pipeline's:
``num_steps * start < step < num_steps * stop``.
"""

from __future__ import annotations

from typing import Mapping

import torch

from kernel.config import register_to_config
from kernel.guidance import POSITIVE, GuidancePass, GuidanceStep, check_scale, check_window

from kernel_guiders.cfg import COND, ClassifierFreeGuidance

SKIP = "pred_cond_skip"


class SkipLayerGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance plus a skip-layer term (arguments as Diffusers' ``SkipLayerGuidance``)."""

    neutral_config = {"guidance_scale": 1.0, "skip_layer_guidance_scale": 0.0}

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, skip_layer_guidance_scale: float = 2.8,
                 skip_layer_guidance_start: float = 0.01, skip_layer_guidance_stop: float = 0.2,
                 skip_layer_guidance_layers: int | list[int] | None = None, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True):
        super().__init__(guidance_scale, guidance_rescale, use_original_formulation, start, stop, enabled)
        check_scale("skip_layer_guidance_scale", skip_layer_guidance_scale, minimum=None)
        check_window(skip_layer_guidance_start, skip_layer_guidance_stop, "skip_layer_guidance")
        if isinstance(skip_layer_guidance_layers, int) and not isinstance(skip_layer_guidance_layers, bool):
            skip_layer_guidance_layers = [skip_layer_guidance_layers]
        if not isinstance(skip_layer_guidance_layers, (list, tuple)) or not skip_layer_guidance_layers or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in skip_layer_guidance_layers):
            raise ValueError("skip_layer_guidance_layers must be a block index or a non-empty list of block "
                             f"indices, got {skip_layer_guidance_layers!r}")
        self.skip_scale = skip_layer_guidance_scale
        self.skip_start, self.skip_stop = skip_layer_guidance_start, skip_layer_guidance_stop
        self.layers = list(skip_layer_guidance_layers)

    def _skip_active(self, step: GuidanceStep) -> bool:
        return self.skip_scale != 0 and step.num_steps * self.skip_start < step.index < step.num_steps * self.skip_stop

    def passes(self, step: GuidanceStep) -> list[GuidancePass]:
        passes = self._cfg_passes(step)
        if self._skip_active(step):
            passes.append(GuidancePass(SKIP, POSITIVE, options={"skip_layers": self.layers}))
        return passes

    def combine(self, predictions: Mapping[str, torch.Tensor], step: GuidanceStep) -> torch.Tensor:
        cond = predictions[COND]
        if SKIP not in predictions:
            return self._rescale(self._cfg(predictions), predictions)
        if len(predictions) == 2:  # no CFG this step: guide from the skipped prediction alone
            skipped = predictions[SKIP]
            base = cond if self.use_original_formulation else skipped
            return base + self.skip_scale * (cond - skipped)
        pred = self._cfg(predictions) + (cond - predictions[SKIP]) * self.skip_scale
        return self._rescale(pred, predictions)
