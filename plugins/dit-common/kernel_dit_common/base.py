"""What the diffusion-transformer pipelines (SD3, Flux, PixArt) share: schedules, checks, VAE I/O, the loop.

Each family's pipeline prepares its conditioning and starting latents and passes a ``predict``
function (latents, t -> model output, guidance included) to :meth:`TransformerPipeline.denoise`,
which steps the scheduler, runs ``callback_on_step_end`` and an optional per-step ``blend``
(inpainting's re-noised known region), with no host-device synchronisation of its own.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch

from kernel.pipeline import Pipeline

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# ---------------------------------------------------------------------------- schedules
def retrieve_timesteps(scheduler, num_inference_steps: int | None = None, device=None,
                       timesteps: Sequence[int] | None = None, sigmas: Sequence[float] | None = None,
                       **kwargs: Any) -> tuple[torch.Tensor, int]:
    """Set the scheduler's schedule (step count, or custom ``timesteps`` / ``sigmas``); return it and its length."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass at most one of timesteps and sigmas")
    accepted = set(inspect.signature(scheduler.set_timesteps).parameters)
    for name, value in (("timesteps", timesteps), ("sigmas", sigmas)):
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"{type(scheduler).__name__}.set_timesteps does not take custom {name}; "
                             "use a scheduler that does, or num_inference_steps")
        scheduler.set_timesteps(**{name: value}, device=device, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, num_inference_steps


def strength_timesteps(scheduler, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """The tail of the schedule image-to-image runs (SDEdit, Meng et al., arXiv:2108.01073)."""
    kept = min(num_inference_steps * strength, num_inference_steps)
    start = int(max(num_inference_steps - kept, 0))
    order = getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * order)
    return scheduler.timesteps[start * order:], num_inference_steps - start


# ---------------------------------------------------------------------------- checks
def batch_size_of(prompt, prompt_embeds) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def effective_batch(prompt, prompt_embeds, num_images_per_prompt: Any) -> int:
    """Prompts x ``num_images_per_prompt``: the batch of latents, after checking the count is a positive int."""
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive int, got {num_images_per_prompt!r}")
    return batch_size_of(prompt, prompt_embeds) * num_images_per_prompt


def check_prompts(prompts: dict[str, Any], prompt_embeds: torch.Tensor | None,
                  negatives: dict[str, Any] | None = None, negative_prompt_embeds: torch.Tensor | None = None) -> None:
    """Text and embeddings exclusive; each text a str or list of str; embeddings of equal shape."""
    for name, value in prompts.items():
        if value is not None and prompt_embeds is not None:
            raise ValueError(f"pass either {name} or prompt_embeds, not both")
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError(f"{name} must be a str or a list of str, got {type(value).__name__}")
    if prompts.get("prompt") is None and prompt_embeds is None:
        raise ValueError("pass prompt (str or list of str) or prompt_embeds")
    for name, value in (negatives or {}).items():
        if value is not None and negative_prompt_embeds is not None:
            raise ValueError(f"pass either {name} or negative_prompt_embeds, not both")
    if prompt_embeds is not None and negative_prompt_embeds is not None and \
            prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                         f"{tuple(negative_prompt_embeds.shape)} must have the same shape")


def check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, pooled_dim: int | None = None) -> None:
    """Sequence and pooled embeddings come together, with matching batch sizes (and width)."""
    pairs = (("prompt_embeds", prompt_embeds, "pooled_prompt_embeds", pooled_prompt_embeds),
             ("negative_prompt_embeds", negative_prompt_embeds, "negative_pooled_prompt_embeds",
              negative_pooled_prompt_embeds))
    for seq_name, seq, pool_name, pool in pairs:
        if seq is not None and pool is None:
            raise ValueError(f"{seq_name} needs {pool_name} from the same text encoders; pass both")
        if seq is None or pool is None:
            continue
        if pool.ndim != 2 or pool.shape[0] != seq.shape[0]:
            raise ValueError(f"{pool_name} {tuple(pool.shape)} does not match {seq_name} {tuple(seq.shape)}: "
                             f"expected shape ({seq.shape[0]}, pooled width)")
        if pooled_dim is not None and pool.shape[1] != pooled_dim:
            raise ValueError(f"{pool_name} has width {pool.shape[1]} but the transformer's pooled_projection_dim "
                             f"is {pooled_dim}")


def check_size(height: Any, width: Any, factor: int, why: str) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise ValueError(f"{name} must be a positive multiple of {factor} ({why}), got {value!r}")


def check_strength(strength: Any) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0.0, 1.0], got {strength!r}")


def check_generators(generator, batch_size: int) -> None:
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"generator is a list of {len(generator)} generators but the effective batch size "
                         f"(prompts x num_images_per_prompt) is {batch_size}; pass one generator or one per image")


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported; use one of {list(OUTPUT_TYPES)}")


# ---------------------------------------------------------------------------- VAE
def sample_latents(vae, images: torch.Tensor, generator) -> torch.Tensor:
    """Posterior samples of ``images`` (one generator per image when given a list), unscaled."""
    def one(x, g):
        encoded = vae.encode(x)
        dist = getattr(encoded, "latent_dist", None)
        if dist is None:
            dist = encoded[0]
        return dist.sample(g) if hasattr(dist, "sample") else dist
    if isinstance(generator, list):
        return torch.cat([one(images[i:i + 1], generator[i]) for i in range(images.shape[0])])
    return one(images, generator)


def vae_shift(vae) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


def to_model_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the normalised space the transformer works in: ``(z - shift) * scale``."""
    return (latents - vae_shift(vae)) * vae.config.scaling_factor


def from_model_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    return latents / vae.config.scaling_factor + vae_shift(vae)


def repeat_to_batch(x: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    """Tile ``x`` (whole-batch copies) up to ``batch_size`` rows."""
    if x.shape[0] >= batch_size:
        return x
    if batch_size % x.shape[0]:
        raise ValueError(f"cannot spread {x.shape[0]} {what} over a batch of {batch_size}; give 1, or a divisor of it")
    return x.repeat(batch_size // x.shape[0], *([1] * (x.ndim - 1)))


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
