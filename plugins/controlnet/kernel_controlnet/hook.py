"""The ControlNet conditioning hook for UNet denoisers, written once for every task and guider.

Before each UNet evaluation (:class:`kernel.engine.Evaluation`) the hook runs the pipeline's ControlNet(s)
on the same latents, timestep and prompt rows the UNet gets, and adds the residuals to the UNet's
keyword arguments (``down_block_additional_residuals``, ``mid_block_additional_residual``).  It runs
before the task's hooks, so an inpainting UNet's extra input channels never reach the ControlNet, and
outside a guider pass's context, so perturbed-attention guidance never perturbs the ControlNet.

Per net ``k``, step ``i`` of ``N``: the residuals are scaled by ``scale_k * keep_k(i)`` where ``keep_k``
is 1 while the step lies inside ``[start_k, end_k]`` of the schedule (Diffusers' rule,
:func:`control_keep`; ``N`` counts the schedule before a ``denoising_end`` cut, as the reference does).  In guess mode the nets see only the rows of positive-prompt passes and the
negative rows get zero residuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernel.engine import Evaluation
from kernel.guidance import NEGATIVE, GuidanceStep

from kernel_controlnet.multicontrolnet import MultiControlNetModel, sum_residuals

DOWN, MID = "down_block_additional_residuals", "mid_block_additional_residual"


def control_keep(step: GuidanceStep, start: float, end: float, num_steps: int | None = None) -> float:
    """1.0 while step ``i`` of ``N`` lies inside the window (``start <= i/N`` and ``(i+1)/N <= end``), else 0.0.

    ``N`` is ``num_steps`` when given (the schedule before a ``denoising_end`` cut), else ``step.num_steps``.
    """
    n = num_steps or step.num_steps
    outside = step.index / n < start or (step.index + 1) / n > end
    return 0.0 if outside else 1.0


def controlnets_of(controlnet: Any) -> list:
    """The nets of a ``ControlNetModel`` or ``MultiControlNetModel``, as a list."""
    return list(controlnet.nets) if isinstance(controlnet, MultiControlNetModel) else [controlnet]


@dataclass
class ControlInputs:
    """One call's control settings: per net, the ``evaluation.shared`` key of its control image, its
    conditioning scale and its ``[start, end]`` window; whether guess mode is on; and the length of the
    schedule the windows are fractions of (None: the loop's)."""

    images: list[str]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    guess_mode: bool = False
    scheduled_steps: int | None = None


class ControlNetHook:
    """``hook(pipe, evaluation)``: adds ``pipe.<component>``'s residuals for ``inputs`` (set per call).

    The UNet's conditioning is read from the evaluation: ``cond["prompt_embeds"]`` and, where the
    pipeline has one, ``pipe._added_cond(cond)`` (SDXL's ``text_embeds`` / ``time_ids``).
    """

    def __init__(self, component: str = "controlnet"):
        self.component = component
        self.inputs: ControlInputs | None = None

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None:
        inputs = self.inputs
        if inputs is None:
            return
        nets = controlnets_of(getattr(pipe, self.component))
        scales = [s * control_keep(evaluation.step, a, b, inputs.scheduled_steps)
                  for s, a, b in zip(inputs.scales, inputs.starts, inputs.ends)]
        active = [k for k, s in enumerate(scales) if s != 0]
        if not active:  # every net outside its window: its residuals would be exact zeros
            return

        passes = evaluation.passes
        rows = evaluation.model_input.shape[0] // len(passes)
        kept = [i for i, p in enumerate(passes) if not (inputs.guess_mode and p.conditioning == NEGATIVE)]
        if not kept:
            return

        def take(x: torch.Tensor) -> torch.Tensor:
            if len(kept) == len(passes):
                return x
            return torch.cat([x[i * rows:(i + 1) * rows] for i in kept])

        cond = {k: take(v) for k, v in evaluation.cond.items()}
        added = getattr(pipe, "_added_cond", None)
        added_cond_kwargs = added(cond) if added is not None else None
        sample = take(evaluation.model_input)
        outputs = [nets[k](sample, evaluation.timestep, cond["prompt_embeds"], take(evaluation.shared[inputs.images[k]]),
                           conditioning_scale=scales[k], added_cond_kwargs=added_cond_kwargs,
                           guess_mode=inputs.guess_mode, return_dict=False)
                   for k in active]
        down, mid = sum_residuals(outputs)
        if len(kept) < len(passes):
            down, mid = [self._spread(d, passes, kept, rows) for d in down], self._spread(mid, passes, kept, rows)
        kwargs = evaluation.kwargs
        if DOWN in kwargs:  # another hook already added residuals
            down, mid = [a + b for a, b in zip(kwargs[DOWN], down)], kwargs[MID] + mid
        kwargs[DOWN], kwargs[MID] = down, mid

    @staticmethod
    def _spread(x: torch.Tensor, passes, kept: list[int], rows: int) -> torch.Tensor:
        """Residuals of the kept passes' rows back into every pass's place, zeros elsewhere."""
        chunks = dict(zip(kept, x.split(rows)))
        zeros = x.new_zeros((rows, *x.shape[1:]))
        return torch.cat([chunks.get(i, zeros) for i in range(len(passes))])
