"""The part every Stable Diffusion pipeline (1.x, 2.x, XL; text, image and inpainting) shares.

Latent diffusion (Rombach et al. 2022): a UNet denoises VAE latents conditioned on CLIP text
embeddings, with classifier-free guidance (Ho & Salimans 2022) mixing an unconditional and a
conditional prediction.  The subclasses prepare the starting latents and the extra UNet inputs;
:meth:`StableDiffusionBase._denoise` runs the loop they all share.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from kernel.image_processor import VaeImageProcessor
from kernel.pipeline import Pipeline
from kernel_clip import PromptOptions

from kernel_sd.common import guidance_embedding, rescale_noise_cfg

logger = logging.getLogger(__name__)


class StableDiffusionBase(Pipeline):
    """Shared state, switches and the denoising loop.  Not used directly."""

    # ---------------------------------------------------------------- construction helpers
    def _setup_processors(self) -> None:
        vae = getattr(self, "vae", None)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.prompt_options = PromptOptions()

    def _default_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels from the UNet's ``sample_size`` (an int or a pair)."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    @staticmethod
    def _normalise_scheduler_config(scheduler) -> None:
        """Old SD scheduler configs carry ``steps_offset=0`` / ``clip_sample=True``, which the SD
        checkpoints were not sampled with; use 1 / False as Diffusers' pipelines do."""
        if scheduler is None:
            return
        fixes = {}
        if getattr(scheduler.config, "steps_offset", 1) != 1:
            fixes["steps_offset"] = 1
        if getattr(scheduler.config, "clip_sample", False) is True:
            fixes["clip_sample"] = False
        if fixes:
            logger.warning("scheduler config updated for Stable Diffusion: %s", fixes)
            scheduler.register_to_config(**fixes)

    # ---------------------------------------------------------------- options
    def set_prompt_options(self, long_prompts: bool | None = None, emphasis: bool | None = None) -> None:
        """Turn on prompts longer than 75 tokens (chunked) and/or A1111 ``(word:1.2)`` emphasis.

        Both are off by default, which gives Diffusers' numbers; see :mod:`kernel_clip.conditioner`.
        """
        current = self.prompt_options
        self.prompt_options = PromptOptions(
            long_prompts=current.long_prompts if long_prompts is None else bool(long_prompts),
            emphasis=current.emphasis if emphasis is None else bool(emphasis),
        )

    # ---------------------------------------------------------------- call state
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def cross_attention_kwargs(self) -> dict | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def do_classifier_free_guidance(self) -> bool:
        # A guidance-distilled UNet (time_cond_proj_dim) takes the scale as an input instead.
        return self._guidance_scale > 1 and getattr(self.unet.config, "time_cond_proj_dim", None) is None

    def _begin_call(self, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs, **extra) -> None:
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        for key, value in extra.items():
            setattr(self, "_" + key, value)

    # ---------------------------------------------------------------- memory switches
    def upcast_vae(self) -> None:
        """Run the VAE in float32 (fp16 SDXL VAEs overflow)."""
        self.vae.to(dtype=torch.float32)

    # ---------------------------------------------------------------- loop
    def _timestep_cond(self, batch: int, device, dtype) -> torch.Tensor | None:
        dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        if dim is None:
            return None
        scale = torch.tensor(self.guidance_scale - 1).repeat(batch)
        return guidance_embedding(scale, embedding_dim=dim).to(device=device, dtype=dtype)

    def _denoise(
        self,
        state: dict[str, torch.Tensor],
        timesteps: torch.Tensor,
        num_inference_steps: int,
        *,
        extra_step_kwargs: dict,
        callback: Callable | None,
        callback_names: list[str] | None,
        timestep_cond: torch.Tensor | None = None,
        added_cond: Callable[[dict], dict | None] = lambda state: None,
        extra_channels: Callable[[dict], list[torch.Tensor]] | None = None,
        after_step: Callable[[int, torch.Tensor, dict], torch.Tensor] | None = None,
        warmup_floor: bool = False,
    ) -> torch.Tensor:
        """Run the denoising loop on ``state["latents"]`` and return the final latents.

        ``state`` holds every tensor a ``callback_on_step_end`` may read or replace (``latents``,
        ``prompt_embeds`` - already ``[negative; positive]`` under guidance - and the subclass's own);
        the loop reads them back from ``state`` every step, so replacements take effect.
        """
        scheduler = self.scheduler
        order = getattr(scheduler, "order", 1)
        warmup = len(timesteps) - num_inference_steps * order
        if warmup_floor:
            warmup = max(warmup, 0)
        self._num_timesteps = len(timesteps)
        guided = self.do_classifier_free_guidance
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latents = state["latents"]
                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                if extra_channels is not None:
                    model_input = torch.cat([model_input, *extra_channels(state)], dim=1)
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=state["prompt_embeds"],
                    timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    added_cond_kwargs=added_cond(state),
                    return_dict=False,
                )[0]
                if guided:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + self.guidance_scale * (text - uncond)
                    if self.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, text, guidance_rescale=self.guidance_rescale)
                latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if after_step is not None:
                    latents = after_step(i, latents, state)
                state["latents"] = latents
                if callback is not None:
                    outputs = callback(self, i, t, {k: state[k] for k in (callback_names or [])}) or {}
                    for key, value in outputs.items():
                        if key in state:
                            state[key] = value
                if i == len(timesteps) - 1 or ((i + 1) > warmup and (i + 1) % order == 0):
                    bar.update()
        return state["latents"]

    # ---------------------------------------------------------------- VAE
    def _unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Undo the VAE latent scaling (and SDXL-style per-channel mean/std when configured)."""
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            return latents * std / cfg.scaling_factor + mean
        return latents / cfg.scaling_factor

    def _decode(self, latents: torch.Tensor, upcast: bool) -> torch.Tensor:
        """Latents -> image tensor in [-1, 1]; with ``upcast`` an fp16 VAE marked ``force_upcast``
        decodes in float32 and is put back afterwards."""
        needs_upcast = upcast and self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if needs_upcast:
            self.upcast_vae()
            latents = latents.to(torch.float32)
        if upcast:
            latents = self._unscale_latents(latents)
        else:
            latents = latents / self.vae.config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        if needs_upcast:
            self.vae.to(dtype=torch.float16)
        return image

    def _encode_image_latents(self, images: torch.Tensor, generator, upcast: bool) -> torch.Tensor:
        """Scaled latents of ``images`` (SDXL: optional float32 upcast and per-channel mean/std)."""
        from kernel_sd.common import encode_latents

        dtype = images.dtype
        if upcast and getattr(self.vae.config, "force_upcast", False):
            images = images.float()
            self.vae.to(dtype=torch.float32)
        latents = encode_latents(self.vae, images, generator)
        if upcast and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(dtype)
        latents = latents.to(dtype)
        return latents

    # ---------------------------------------------------------------- safety checker
    def _warn_unused_safety_checker(self) -> None:
        if getattr(self, "safety_checker", None) is not None and not getattr(self, "_warned_checker", False):
            logger.warning("a safety_checker was given but kernel-sd does not run safety checkers; "
                           "images are returned unfiltered and nsfw_content_detected is None")
            self._warned_checker = True


def default_callback_names(names: Any) -> list[str]:
    return list(names) if names is not None else []
