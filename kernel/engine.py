"""The one denoising loop every pipeline runs, and the rules around it.

A family pipeline supplies how to evaluate its denoiser once (:meth:`Engine._evaluate`: model input,
timestep, the batched conditioning tensors and extra keyword arguments in, a prediction shaped like the
latents out).  Everything else is written here once:

* the loop: timesteps and the scheduler's ``order``, ``scale_model_input``, the step, interrupt,
  progress bar, ``current_timestep``, ``callback_on_step_end`` and the legacy ``callback``;
* guidance: the pipeline's guider (:mod:`kernel.guidance`) names the evaluations each step needs;
  the loop runs them, batching passes with the same options, and lets the guider combine them;
* conditioning hooks: components attached to the pipeline (``pipe.conditioning_hooks``) and the
  task's own (the masked-image channels of inpainting models) see every evaluation before the
  denoiser does and may add input channels, conditioning tensors or keyword arguments
  (ControlNet and T2I-Adapter residuals).

The step-end callback rule, the same in every family
----------------------------------------------------
``callback_on_step_end(pipe, step_index, timestep, tensors)`` gets the names listed in
``callback_on_step_end_tensor_inputs`` (each must be in the pipeline's ``_callback_tensor_inputs``):

* ``latents``: the latents after the step (one row per image);
* a prompt tensor (``prompt_embeds``, ``pooled_prompt_embeds``, ``add_text_embeds``, ``add_time_ids``,
  ``prompt_attention_mask``, ...): the batch the denoiser is given for it, which while the guider runs
  the negative and positive prompts in one batch is ``[negative; positive]`` (Diffusers' layout), and
  the positive rows otherwise; ``negative_<name>`` is the negative half alone (None without one);
* a per-image tensor every evaluation shares (``mask``, ``masked_image_latents``): one row per image.

The callback returns a dict of replacements (or None), used from the next step on.  A prompt tensor
returned with the full ``[negative; positive]`` batch replaces both halves; returned with the positive
rows only it replaces the positive and drops the negative conditioning, so guidance stops (this is
Diffusers' "dynamic CFG" recipe: ``prompt_embeds.chunk(2)[-1]``).  Any other name is an error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from kernel.guidance import NEGATIVE, POSITIVE, GuidancePass, GuidanceStep


@dataclass
class Conditioning:
    """What a denoiser is conditioned on, by public (callback) name.

    ``positive`` / ``negative``: per-prompt tensors (one row per image); ``negative`` is None when no
    negative prompt was encoded.  ``shared``: per-image tensors every evaluation takes whatever its
    prompt (inpainting's mask and masked-image latents, control images).
    """

    positive: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor] | None = None
    shared: dict[str, torch.Tensor] = field(default_factory=dict)

    def side(self, which: str) -> dict[str, torch.Tensor]:
        if which == NEGATIVE:
            if self.negative is None:
                raise ValueError("a guider asked for the negative conditioning, but none was encoded")
            return self.negative
        return self.positive


@dataclass
class Evaluation:
    """One denoiser call being assembled; conditioning hooks may change any field.

    ``model_input``: latents for every pass of the call, stacked in pass order and already scaled by
    the scheduler; ``cond``: the prompt tensors stacked the same way; ``shared``: the per-image
    tensors repeated once per pass; ``kwargs``: extra keyword arguments for the denoiser (a guider's
    pass options, residuals a hook adds).
    """

    model_input: torch.Tensor
    timestep: torch.Tensor
    cond: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]
    kwargs: dict[str, Any]
    passes: tuple[GuidancePass, ...]
    step: GuidanceStep


@runtime_checkable
class ConditioningHook(Protocol):
    """A component's contribution to every denoiser evaluation: ``hook(pipe, evaluation)``.

    It edits the :class:`Evaluation` in place (concatenates input channels, adds ``kwargs`` such as
    residuals, adds ``cond`` tensors) and may read ``evaluation.step`` to apply per-step scales or a
    start/stop window.  Hooks run in order: the pipeline's ``conditioning_hooks`` first, then the task's.
    """

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None: ...


class ExtraChannels:
    """Concatenates per-image tensors from ``shared`` to the model input (inpainting models' mask and
    masked-image latents)."""

    def __init__(self, *names: str):
        self.names = names

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None:
        extra = [evaluation.shared[n] for n in self.names]
        evaluation.model_input = torch.cat([evaluation.model_input, *extra], dim=1)


def _group(passes: Sequence[GuidancePass], batched: bool) -> list[list[GuidancePass]]:
    if not batched:
        return [[p] for p in passes]
    groups: dict[tuple, list[GuidancePass]] = {}
    for p in passes:
        groups.setdefault(p.group_key(), []).append(p)
    return list(groups.values())


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class Engine:
    """The loop and the step-end callback rule; mixed into the pipeline base class."""

    conditioning_hooks: list[ConditioningHook]  # per pipeline, see DiffusionPipeline.conditioning_hooks

    # ---------------------------------------------------------------- call state
    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return getattr(self, "_current_timestep", None)

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    # ---------------------------------------------------------------- family hook
    def _evaluate(self, model_input: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor],
                  **kwargs: Any) -> torch.Tensor:
        """One denoiser call; returns the prediction shaped like ``model_input``'s latents."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to evaluate its denoiser (_evaluate)")

    def _step_kwargs(self, index: int, timesteps: torch.Tensor) -> dict[str, Any]:
        """Per-step keyword arguments for ``scheduler.step`` on top of the call's (none by default; the unCLIP
        prior passes the next timestep, ``prev_timestep``, to a scheduler that is told each jump)."""
        return {}

    def _scale_model_input(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's input at ``t``: ``scheduler.scale_model_input``; a family whose reference pipelines feed
        the latents unscaled whatever the scheduler (Kandinsky) overrides this."""
        return self.scheduler.scale_model_input(latents, t)

    def _scheduler_step(self, prediction: torch.Tensor, t: torch.Tensor, latents: torch.Tensor, index: int,
                        timesteps: torch.Tensor, kwargs: dict[str, Any]) -> tuple:
        """One ``scheduler.step``, as a tuple; a family whose scheduler takes other positional arguments or
        carries state between steps (CogVideoX's multistep DPM) overrides this."""
        return self.scheduler.step(prediction, t, latents, **kwargs, return_dict=False)

    # ---------------------------------------------------------------- the loop
    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, num_inference_steps: int,
                conditioning: Conditioning, guider: Any, *, step_kwargs: dict | None = None,
                callback: Callable | None = None, callback_names: Sequence[str] = (),
                legacy_callback: Callable | None = None, callback_steps: int = 1,
                blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                hooks: Sequence[ConditioningHook] = (), output_index: int = 0) -> torch.Tensor:
        """Run ``timesteps`` from ``latents`` and return the final latents.

        ``blend(i, latents)`` runs after each scheduler step (inpainting pastes the known region back);
        ``output_index`` picks the scheduler output to continue from (1: the predicted clean sample).
        """
        order = self.scheduler.order
        warmup = max(len(timesteps) - num_inference_steps * order, 0)
        self._num_timesteps = len(timesteps)
        hooks = [*getattr(self, "conditioning_hooks", ()), *hooks]
        guider.reset()
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                step = GuidanceStep(i, len(timesteps), t, conditioning.negative is not None)
                prediction = self._guided_prediction(latents, t, conditioning, guider, step, hooks)
                dtype = latents.dtype
                stepped = self._scheduler_step(prediction, t, latents, i, timesteps,
                                               {**(step_kwargs or {}), **self._step_kwargs(i, timesteps)})
                latents = stepped[output_index] if len(stepped) > output_index else stepped[0]
                if blend is not None:
                    latents = blend(i, latents)
                latents = latents.to(dtype)
                if callback is not None:
                    latents = self._step_callback(callback, callback_names, i, t, latents, conditioning)
                if i == len(timesteps) - 1 or ((i + 1) > warmup and (i + 1) % order == 0):
                    bar.update()
                    if legacy_callback is not None and i % callback_steps == 0:
                        legacy_callback(i // order, t, latents)
        self._current_timestep = None
        return latents

    def _guided_prediction(self, latents, t, conditioning: Conditioning, guider, step: GuidanceStep,
                           hooks) -> torch.Tensor:
        passes = guider.passes(step)
        model_input = self._scale_model_input(latents, t)
        predictions: dict[str, torch.Tensor] = {}
        self._stacked_guidance = False
        for group in _group(passes, guider.batched):
            n = len(group)
            sides = [conditioning.side(p.conditioning) for p in group]
            evaluation = Evaluation(
                model_input=_stack([model_input] * n), timestep=t,
                cond={k: _stack([s[k] for s in sides]) for k in conditioning.positive},
                shared={k: _stack([v] * n) for k, v in conditioning.shared.items()},
                kwargs=dict(group[0].options), passes=tuple(group), step=step)
            for hook in hooks:
                hook(self, evaluation)
            context = group[0].context(self._denoiser()[1]) if group[0].context else contextlib.nullcontext()
            with context:
                out = self._evaluate(evaluation.model_input, t, evaluation.cond, **evaluation.kwargs)
            for p, chunk in zip(group, out.chunk(n) if n > 1 else (out,)):
                predictions[p.name] = chunk
            if {p.conditioning for p in group} == {NEGATIVE, POSITIVE}:
                self._stacked_guidance = True
        return guider.combine(predictions, step)

    # ---------------------------------------------------------------- callbacks
    def _callback_view(self, name: str, latents: torch.Tensor, cond: Conditioning):
        if name == "latents":
            return latents
        if name in cond.positive:
            if self._stacked_guidance and cond.negative is not None:
                return torch.cat([cond.negative[name], cond.positive[name]])
            return cond.positive[name]
        if name.startswith("negative_") and name[len("negative_"):] in cond.positive:
            return None if cond.negative is None else cond.negative[name[len("negative_"):]]
        return cond.shared.get(name)

    def _step_callback(self, callback, names, i, t, latents, cond: Conditioning) -> torch.Tensor:
        outputs = callback(self, i, t, {n: self._callback_view(n, latents, cond) for n in names}) or {}
        if not isinstance(outputs, dict):
            raise TypeError(f"callback_on_step_end must return a dict of tensors (or None), got {type(outputs).__name__}")
        for name, value in outputs.items():
            if name not in self._callback_tensor_inputs:
                raise ValueError(f"callback_on_step_end returned {name!r}, which is not one of this pipeline's "
                                 f"callback tensors {list(self._callback_tensor_inputs)}")
            if value is None:
                continue
            if name == "latents":
                latents = value
            elif name in cond.positive:
                self._replace_prompt_tensor(name, value, cond)
            elif name.startswith("negative_") and name[len("negative_"):] in cond.positive:
                if cond.negative is not None:
                    cond.negative[name[len("negative_"):]] = value
            else:
                cond.shared[name] = value
        return latents

    def _replace_prompt_tensor(self, name: str, value: torch.Tensor, cond: Conditioning) -> None:
        rows = cond.positive[name].shape[0]
        if cond.negative is not None and value.shape[0] == 2 * rows:
            cond.negative[name], cond.positive[name] = value[:rows], value[rows:]
        elif value.shape[0] == rows:
            cond.positive[name] = value
            if self._stacked_guidance:
                cond.negative = None  # positive rows only: guidance ends from the next step
        else:
            raise ValueError(f"callback_on_step_end returned {name} with {value.shape[0]} rows; expected {rows} "
                             f"(positive) or {2 * rows} ([negative; positive])")

    def _callback_names(self, callback, names) -> list[str]:
        """The tensor names for ``callback``: a callback object carries its own ``tensor_inputs``."""
        from kernel.pipeline_utils import check_callback_inputs

        names = list(getattr(callback, "tensor_inputs", names) or [])
        check_callback_inputs(names, self._callback_tensor_inputs)
        return names
