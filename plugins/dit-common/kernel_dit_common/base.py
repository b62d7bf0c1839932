"""What the diffusion-transformer pipelines (SD3, Flux, PixArt) share: schedules, checks, VAE I/O, the loop.

Each family's pipeline prepares its conditioning and starting latents and passes a ``predict``
function (latents, t -> model output, guidance included) to :meth:`TransformerPipeline.denoise`,
which steps the scheduler, runs ``callback_on_step_end`` and an optional per-step ``blend``
(inpainting's re-noised known region), with no host-device synchronisation of its own.

The family-neutral schedule, VAE and argument helpers come from :mod:`kernel.pipeline_utils` and are
re-exported here (``sample_latents`` is its ``encode_latents``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from kernel.pipeline import Pipeline
# Re-exported: the DiT pipelines import these from kernel_dit_common.
from kernel.pipeline_utils import (OUTPUT_TYPES, batch_size_of, check_generators, check_output_type, check_pooled,
                                   check_prompts, check_size, check_steps_left, check_strength, effective_batch, repeat_to_batch,
                                   retrieve_timesteps)
from kernel.pipeline_utils import encode_latents as sample_latents
from kernel.pipeline_utils import strength_timesteps as _strength_timesteps

__all__ = [
    "OUTPUT_TYPES",
    "TransformerPipeline",
    "batch_size_of",
    "check_generators",
    "check_output_type",
    "check_pooled",
    "check_prompts",
    "check_size",
    "check_steps_left",
    "check_strength",
    "effective_batch",
    "from_model_latents",
    "repeat_to_batch",
    "retrieve_timesteps",
    "sample_latents",
    "strength_timesteps",
    "to_model_latents",
    "vae_shift",
]


# ---------------------------------------------------------------------------- schedules
def strength_timesteps(scheduler, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """:func:`kernel.pipeline_utils.strength_timesteps` with the DiT pipelines' rounding (the start index
    is floored, so ``steps * strength`` rounds up)."""
    return _strength_timesteps(scheduler, num_inference_steps, strength, floor_kept=False)


# ---------------------------------------------------------------------------- VAE
def vae_shift(vae) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


def to_model_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the normalised space the transformer works in: ``(z - shift) * scale``."""
    return (latents - vae_shift(vae)) * vae.config.scaling_factor


def from_model_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    return latents / vae.config.scaling_factor + vae_shift(vae)


# ---------------------------------------------------------------------------- pipeline base
class TransformerPipeline(Pipeline):
    """Call state, callbacks, decoding and the denoising loop shared by the DiT pipelines."""

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def joint_attention_kwargs(self) -> dict | None:
        return getattr(self, "_joint_attention_kwargs", None)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return getattr(self, "_current_timestep", None)

    def _callback_names(self, callback, names):
        # A callback object (PipelineCallback-style) carries its own tensor_inputs.
        names = getattr(callback, "tensor_inputs", names)
        self.check_callback_inputs(names)
        return names

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, num_inference_steps: int,
                predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], state: dict[str, Any],
                callback=None, callback_names: Sequence[str] | None = None,
                blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                step_kwargs: dict | None = None, output_index: int = 0, legacy_callback=None,
                callback_steps: int = 1) -> torch.Tensor:
        """Run the schedule.  ``state`` holds the tensors a callback may read and replace.

        ``output_index`` picks the scheduler output used as the next latents (1 = the predicted clean
        sample, which single-step PixArt sampling returns); ``legacy_callback(step, t, latents)`` is the
        older per-``callback_steps`` hook.
        """
        self._num_timesteps = len(timesteps)
        self._interrupt = False
        order = getattr(self.scheduler, "order", 1)
        warmup = max(len(timesteps) - num_inference_steps * order, 0)
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                output = predict(latents, t)
                dtype = latents.dtype
                stepped = self.scheduler.step(output, t, latents, **(step_kwargs or {}), return_dict=False)
                # Schedulers that return only the previous sample have no clean-sample prediction to take.
                latents = stepped[output_index] if len(stepped) > output_index else stepped[0]
                if blend is not None:
                    latents = blend(i, latents)
                latents = latents.to(dtype)
                if callback is not None:
                    state["latents"] = latents
                    changed = callback(self, i, t, {n: state[n] for n in (callback_names or [])}) or {}
                    state.update(changed)
                    latents = state["latents"]
                if i == len(timesteps) - 1 or ((i + 1) > warmup and (i + 1) % order == 0):
                    bar.update()
                    if legacy_callback is not None and i % callback_steps == 0:
                        legacy_callback(i // order, t, latents)
        self._current_timestep = None
        return latents

    def decode(self, latents: torch.Tensor, output_type: str, *, shift: bool = True) -> Any:
        """Model latents -> images of ``output_type`` (``latent`` returns them as they are)."""
        if output_type == "latent":
            return latents
        z = from_model_latents(self.vae, latents) if shift else latents / self.vae.config.scaling_factor
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return self.image_processor.postprocess(image, output_type=output_type)
