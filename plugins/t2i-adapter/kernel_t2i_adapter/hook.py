"""The T2I-Adapter conditioning hook for UNet denoisers, written once for every task and guider.

The adapter features do not depend on the latents, the timestep or the prompt, so the pipeline computes
them once per call (already scaled by ``adapter_conditioning_scale``, one row per generated image) and puts
them into the per-image conditioning (``cond.shared``), which the engine repeats once per guider pass: the
negative and positive rows of classifier-free guidance, PAG's perturbed pass, ... all get the same features,
as in Diffusers.  Before each UNet evaluation of the first ``int(N * adapter_conditioning_factor)`` steps
the hook hands them to the UNet as ``down_intrablock_additional_residuals`` (``N``: the steps the loop
runs, after a ``denoising_end`` cut, as Diffusers counts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernel.engine import Evaluation

INTRABLOCK = "down_intrablock_additional_residuals"


def adapter_steps(num_steps: int, factor: float) -> int:
    """How many leading steps get the adapter: ``int(num_steps * factor)`` (Diffusers' rounding)."""
    return int(num_steps * factor)


@dataclass
class AdapterInputs:
    """One call's adapter settings: the ``evaluation.shared`` keys of the feature maps (shallowest first)
    and the number of leading steps that get them."""

    features: list[str]
    active_steps: int


class T2IAdapterHook:
    """``hook(pipe, evaluation)``: adds the call's adapter features (``inputs``, set per call) to the UNet's
    ``down_intrablock_additional_residuals``; features another hook already put there are added to."""

    def __init__(self) -> None:
        self.inputs: AdapterInputs | None = None

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None:
        inputs = self.inputs
        if inputs is None or evaluation.step.index >= inputs.active_steps:
            return
        features = [evaluation.shared[k] for k in inputs.features]
        kwargs = evaluation.kwargs
        if kwargs.get(INTRABLOCK) is not None:
            features = [a + b for a, b in zip(kwargs[INTRABLOCK], features)]
        # A fresh list each evaluation: the UNet consumes the one it is given.
        kwargs[INTRABLOCK] = list(features)
