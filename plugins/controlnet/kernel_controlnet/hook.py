"""The ControlNet conditioning hooks, one per denoiser architecture, each written once for every task and
guider: :class:`ControlNetHook` (UNet: SD 1.x/2.x, SDXL; :class:`ControlNetUnionHook` for SDXL's union nets),
:class:`MMDiTControlNetHook` (SD3 / SD3.5) and :class:`FluxControlNetHook` (Flux.1).

Before each denoiser evaluation (:class:`kernel.engine.Evaluation`) a hook runs the pipeline's ControlNet(s)
on the evaluation's latents and timestep and adds their residuals to the denoiser's keyword arguments.  It
runs before the task's hooks, so an inpainting model's extra input channels never reach the ControlNet, and
outside a guider pass's context, so perturbed-attention guidance never perturbs the ControlNet.

Per control ``k`` (a net and its control image), step ``i`` of ``N``: the residuals are scaled by
``scale_k * keep_k(i)`` where ``keep_k`` is 1 while the step lies inside ``[start_k, end_k]`` of the schedule
(Diffusers' rule, :func:`control_keep`; ``N`` counts the schedule before a ``denoising_end`` cut, as the
reference does).  Controls outside their window are not run (their residuals would be exact zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernel.engine import Conditioning, Evaluation
from kernel.guidance import NEGATIVE, GuidanceStep

from kernel_controlnet.multicontrolnet import NetList, add_samples, sum_residuals

DOWN, MID = "down_block_additional_residuals", "mid_block_additional_residual"
MMDIT = "block_controlnet_hidden_states"
FLUX, FLUX_SINGLE = "controlnet_block_samples", "controlnet_single_block_samples"
FLUX_REPEAT = "controlnet_blocks_repeat"


def control_keep(step: GuidanceStep, start: float, end: float, num_steps: int | None = None) -> float:
    """1.0 while step ``i`` of ``N`` lies inside the window (``start <= i/N`` and ``(i+1)/N <= end``), else 0.0.

    ``N`` is ``num_steps`` when given (the schedule before a ``denoising_end`` cut), else ``step.num_steps``.
    """
    n = num_steps or step.num_steps
    outside = step.index / n < start or (step.index + 1) / n > end
    return 0.0 if outside else 1.0


def controlnets_of(controlnet: Any) -> list:
    """The nets of a ControlNet or of a multi-net model, as a list."""
    return list(controlnet.nets) if isinstance(controlnet, NetList) else [controlnet]


@dataclass
class ControlInputs:
    """One call's control settings, per control ``k``: the ``cond`` key of its control image, its conditioning
    scale and its ``[start, end]`` window, the net it runs through (``nets``, default: net ``k``) and, for union
    ControlNets, its mode; whether guess mode is on (UNet); the length of the schedule the windows are
    fractions of (None: the loop's); the call's conditioning (the Flux hook reads its positive prompt); and whether
    union nets run as members of a multi-net model (their residuals then carry the scale)."""

    images: list[str]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    guess_mode: bool = False
    scheduled_steps: int | None = None
    nets: list[int] | None = None
    modes: list[Any] | None = None
    conditioning: Conditioning | None = None
    from_multi: bool = False

    def step_scales(self, step: GuidanceStep) -> list[float]:
        """Each control's scale at ``step`` (0 outside its window)."""
        return [s * control_keep(step, a, b, self.scheduled_steps)
                for s, a, b in zip(self.scales, self.starts, self.ends)]

    def net_of(self, k: int) -> int:
        return k if self.nets is None else self.nets[k]


class _Hook:
    def __init__(self, component: str = "controlnet"):
        self.component = component
        self.inputs: ControlInputs | None = None

    def _active(self, pipe: Any, evaluation: Evaluation):
        """(nets, per-control scales, indices of the controls that run), or None when none runs."""
        if self.inputs is None:
            return None
        scales = self.inputs.step_scales(evaluation.step)
        active = [k for k, s in enumerate(scales) if s != 0]
        return (controlnets_of(getattr(pipe, self.component)), scales, active) if active else None


class ControlNetHook(_Hook):
    """UNet hook: adds ``down_block_additional_residuals`` / ``mid_block_additional_residual``.

    The UNet's conditioning is read from the evaluation: ``cond["prompt_embeds"]`` and, where the pipeline
    has one, ``pipe._added_cond(cond)`` (SDXL's ``text_embeds`` / ``time_ids``).  In guess mode the nets see
    only the rows of positive-prompt passes and the negative rows get zero residuals.
    """

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None:
        found = self._active(pipe, evaluation)
        if found is None:
            return
        nets, scales, active = found
        inputs = self.inputs
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
        images = {k: take(evaluation.shared[inputs.images[k]]) for k in active}
        outputs = self._run(nets, scales, active, take(evaluation.model_input), evaluation.timestep,
                            cond["prompt_embeds"], images, added_cond_kwargs)
        down, mid = sum_residuals(outputs)
        if len(kept) < len(passes):
            down, mid = [self._spread(d, passes, kept, rows) for d in down], self._spread(mid, passes, kept, rows)
        kwargs = evaluation.kwargs
        if DOWN in kwargs:  # another hook already added residuals
            down, mid = [a + b for a, b in zip(kwargs[DOWN], down)], kwargs[MID] + mid
        kwargs[DOWN], kwargs[MID] = down, mid

    def _run(self, nets: list, scales: list[float], active: list[int], sample: torch.Tensor, timestep: torch.Tensor,
             text: torch.Tensor, images: dict[int, torch.Tensor], added_cond_kwargs: dict | None) -> list:
        """``(down, mid)`` residuals of each active control ``k`` (its net on its image ``images[k]``)."""
        return [nets[self.inputs.net_of(k)](sample, timestep, text, images[k], conditioning_scale=scales[k],
                                            added_cond_kwargs=added_cond_kwargs, guess_mode=self.inputs.guess_mode,
                                            return_dict=False)
                for k in active]

    @staticmethod
    def _spread(x: torch.Tensor, passes, kept: list[int], rows: int) -> torch.Tensor:
        """Residuals of the kept passes' rows back into every pass's place, zeros elsewhere."""
        chunks = dict(zip(kept, x.split(rows)))
        zeros = x.new_zeros((rows, *x.shape[1:]))
        return torch.cat([chunks.get(i, zeros) for i in range(len(passes))])


class ControlNetUnionHook(ControlNetHook):
    """UNet hook for SDXL ControlNet-Union nets (``ControlNetUnionModel`` or a ``MultiControlNetUnionModel``).

    Each net runs once per evaluation on all of its controls (images with their ``modes``), as Diffusers calls it:
    a single union net given several images takes each image's scale (0 outside its window) and runs at every
    step, since its residuals do not vanish with the images' scales; inside a multi-net model each net has one
    scale for its residuals and is skipped while it is 0.
    """

    def __init__(self, component: str = "controlnet"):
        super().__init__(component)
        self._kinds: dict = {}
        self._kinds_for: ControlInputs | None = None

    def _control_type(self, net: Any, n: int, modes: list[int], like: torch.Tensor) -> torch.Tensor:
        """Net ``n``'s multi-hot control modes for ``like``'s rows, made once per call (no per-step host work)."""
        if self._kinds_for is not self.inputs:
            self._kinds, self._kinds_for = {}, self.inputs
        key = (n, like.shape[0], like.device, like.dtype)
        if key not in self._kinds:
            self._kinds[key] = net.control_type_of(modes, like.shape[0]).to(device=like.device, dtype=like.dtype)
        return self._kinds[key]

    def _active(self, pipe: Any, evaluation: Evaluation):
        found = super()._active(pipe, evaluation)
        inputs = self.inputs
        if inputs is None or isinstance(getattr(pipe, self.component), NetList) or len(inputs.images) == 1:
            return found
        nets = controlnets_of(getattr(pipe, self.component))
        return nets, inputs.step_scales(evaluation.step), list(range(len(inputs.images)))

    def _run(self, nets: list, scales: list[float], active: list[int], sample: torch.Tensor, timestep: torch.Tensor,
             text: torch.Tensor, images: dict[int, torch.Tensor], added_cond_kwargs: dict | None) -> list:
        inputs = self.inputs
        groups: dict[int, list[int]] = {}
        for k in active:
            groups.setdefault(inputs.net_of(k), []).append(k)
        outputs = []
        for n, controls in groups.items():
            net, modes = nets[n], [inputs.modes[k] for k in controls]
            kind = self._control_type(net, n, modes, text)
            outputs.append(net(sample, timestep, text, [images[k] for k in controls], kind, modes,
                               [scales[k] for k in controls], added_cond_kwargs=added_cond_kwargs,
                               from_multi=inputs.from_multi, guess_mode=inputs.guess_mode,
                               return_dict=False))
        return outputs


class MMDiTControlNetHook(_Hook):
    """SD3 / SD3.5 hook: adds ``block_controlnet_hidden_states`` (one residual per ControlNet block).

    Every row is conditioned on its own pass's prompt and control latents (the control latents are per
    prompt side: ``cond[key]`` holds the negative rows' sample for negative passes, as Diffusers encodes the
    control image once per classifier-free-guidance half).  The net's pooled text is the call's
    ``controlnet_pooled_projections`` when given, zeros for nets saved with
    ``force_zeros_for_pooled_projection`` (and in pipelines that always zero it), else the prompt's.
    """

    def __init__(self, component: str = "controlnet", zero_pooled: bool = False):
        super().__init__(component)
        self.zero_pooled = zero_pooled

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None:
        found = self._active(pipe, evaluation)
        if found is None:
            return
        nets, scales, active = found
        cond, x = evaluation.cond, evaluation.model_input
        timestep = evaluation.timestep.expand(x.shape[0])
        total = None
        for k in active:
            net = nets[self.inputs.net_of(k)]
            if "controlnet_pooled_projections" in cond:
                pooled = cond["controlnet_pooled_projections"]
            elif self.zero_pooled or net.config.force_zeros_for_pooled_projection:
                pooled = torch.zeros_like(cond["pooled_prompt_embeds"])
            else:
                pooled = cond["pooled_prompt_embeds"]
            text = cond["prompt_embeds"] if net.context_embedder is not None else None
            samples = net(x, cond[self.inputs.images[k]], scales[k], encoder_hidden_states=text,
                          pooled_projections=pooled, timestep=timestep,
                          joint_attention_kwargs=pipe.joint_attention_kwargs, return_dict=False)[0]
            total = samples if total is None else add_samples(total, samples)
        if MMDIT in evaluation.kwargs:  # another hook already added residuals
            total = add_samples(evaluation.kwargs[MMDIT], total)
        evaluation.kwargs[MMDIT] = total


class FluxControlNetHook(_Hook):
    """Flux hook: adds ``controlnet_block_samples`` / ``controlnet_single_block_samples`` (and
    ``controlnet_blocks_repeat`` for nets that read the control image itself, XLabs').

    As in Diffusers, the nets are conditioned on the positive prompt only and every pass (true classifier-free
    guidance's negative one included) gets those residuals: they are computed once per step, on one copy
    of the latents, and reused by the step's other evaluations.
    """

    def __init__(self, component: str = "controlnet"):
        super().__init__(component)
        self._step: GuidanceStep | None = None
        self._samples: tuple | None = None

    def release(self) -> None:
        """Forget the residuals kept for the current step (after the loop)."""
        self._step, self._samples = None, None

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None:
        found = self._active(pipe, evaluation)
        if found is None:
            return
        nets, scales, active = found
        rows = evaluation.model_input.shape[0] // len(evaluation.passes)
        if self._step is not evaluation.step:
            self._samples = self._run(pipe, evaluation, nets, scales, active, rows)
            self._step = evaluation.step
        samples, single, repeat = self._samples
        copies = len(evaluation.passes)
        if copies > 1:
            samples = None if samples is None else [s.repeat(copies, 1, 1) for s in samples]
            single = None if single is None else [s.repeat(copies, 1, 1) for s in single]
        kwargs = evaluation.kwargs
        if FLUX in kwargs or FLUX_SINGLE in kwargs:  # another hook already added residuals
            samples, single = add_samples(kwargs.get(FLUX), samples), add_samples(kwargs.get(FLUX_SINGLE), single)
        kwargs[FLUX], kwargs[FLUX_SINGLE], kwargs[FLUX_REPEAT] = samples, single, repeat

    def _run(self, pipe: Any, evaluation: Evaluation, nets: list, scales: list[float], active: list[int], rows: int):
        inputs, call = self.inputs, pipe._call
        positive = inputs.conditioning.positive
        x = evaluation.model_input[:rows]
        timestep = evaluation.timestep.expand(rows).to(x.dtype) / 1000
        text = positive["prompt_embeds"]
        text_ids = call.text_ids[text.shape[1]]
        total = total_single = None
        for i, k in enumerate(active):
            net = nets[inputs.net_of(k)]
            guidance = None
            if net.config.guidance_embeds:
                guidance = torch.full((rows,), float(call.guidance_scale), device=x.device, dtype=torch.float32)
            mode = inputs.modes[k] if inputs.modes is not None and net.union else None
            samples, single = net(x, evaluation.shared[inputs.images[k]][:rows], mode, scales[k],
                                  encoder_hidden_states=text, pooled_projections=positive["pooled_prompt_embeds"],
                                  timestep=timestep, img_ids=call.img_ids, txt_ids=text_ids, guidance=guidance,
                                  joint_attention_kwargs=pipe.joint_attention_kwargs, return_dict=False)
            if i == 0:
                total, total_single = samples, single
            else:
                total, total_single = add_samples(total, samples), add_samples(total_single, single)
        repeat = nets[inputs.net_of(active[0])].uses_image
        return total, total_single, repeat
