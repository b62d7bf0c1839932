"""What every Stable Diffusion pipeline (1.x, 2.x, XL; text, image and inpainting) shares.

Latent diffusion (Rombach et al. 2022): a UNet denoises VAE latents conditioned on CLIP text
embeddings.  The loop, guidance and the three tasks come from the kernel (:mod:`kernel.engine`,
:mod:`kernel.tasks`); this module says how the UNet is evaluated once and holds SD's switches.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
import torch

from kernel_autoencoders.image_processor import VaeImageProcessor
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_size
from kernel_clip import PromptOptions
from kernel_ip_adapter import IPAdapterMixin
from kernel_lora import LoraLoaderMixin
from kernel_textual_inversion import TextualInversionLoaderMixin

from kernel_sd.common import check_embeds

logger = logging.getLogger(__name__)


def guidance_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding ``(N, embedding_dim)`` of the guidance scales ``w`` ``(N,)`` for guidance-distilled
    denoisers (``time_cond_proj_dim``; Meng et al. 2023, "On Distillation of Guided Diffusion Models")."""
    w = w * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class StableDiffusionBase(IPAdapterMixin, TextualInversionLoaderMixin, LoraLoaderMixin, DiffusionPipeline):
    """Shared construction, switches and the UNet evaluation.  Not used directly."""

    pipeline_family = "stable-diffusion"

    # ---------------------------------------------------------------- construction helpers
    def _setup_processors(self) -> None:
        vae = getattr(self, "vae", None)
        self.vae_scale_factor = vae.spatial_compression_ratio if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.mask_processor = VaeImageProcessor.for_masks(self.vae_scale_factor)
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

    def upcast_vae(self) -> None:
        """Run the VAE in float32 (fp16 SDXL VAEs overflow)."""
        self.vae.to(dtype=torch.float32)

    # ---------------------------------------------------------------- engine hooks
    def _lora_scale(self) -> float | None:
        return (self.cross_attention_kwargs or {}).get("scale")

    def _distilled_guidance(self) -> bool:
        # A guidance-distilled UNet (time_cond_proj_dim, e.g. LCM) takes the scale as an input instead.
        return getattr(self.unet.config, "time_cond_proj_dim", None) is not None

    def _default_guider(self, call: SimpleNamespace):
        if self._distilled_guidance():
            from kernel.tasks import NoGuidance

            return NoGuidance()
        return super()._default_guider(call)

    def _prepare_size(self, call: SimpleNamespace, default: tuple[int, int]) -> None:
        if hasattr(call, "height"):
            call.height = call.height or default[0]
            call.width = call.width or default[1]
            check_size(call.height, call.width, self.vae_scale_factor)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        height, width = call.height, call.width
        return (call.batch, self.vae.config.latent_channels, height // self.vae_scale_factor,
                width // self.vae_scale_factor)

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)  # IP-Adapter image embeddings (IPAdapterMixin)
        call.timestep_cond = None
        dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        if dim is not None:
            scale = torch.tensor(self.guidance_scale - 1).repeat(call.batch)
            call.timestep_cond = guidance_embedding(scale, embedding_dim=dim).to(device=call.device,
                                                                                 dtype=latents.dtype)

    def _added_cond(self, cond: dict) -> dict | None:
        return super()._added_cond(cond)  # IP-Adapter image embeddings (IPAdapterMixin), else None

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.unet(model_input, timestep, encoder_hidden_states=cond["prompt_embeds"],
                         timestep_cond=self._call.timestep_cond, cross_attention_kwargs=self.cross_attention_kwargs,
                         added_cond_kwargs=self._added_cond(cond), return_dict=False, **kwargs)[0]

    # ---------------------------------------------------------------- safety checker
    def _warn_unused_safety_checker(self) -> None:
        if getattr(self, "safety_checker", None) is not None and not getattr(self, "_warned_checker", False):
            logger.warning("a safety_checker was given but kernel-sd does not run safety checkers; "
                           "images are returned unfiltered and nsfw_content_detected is None")
            self._warned_checker = True


def check_prompts(call: SimpleNamespace) -> None:
    """SD's prompt rules (text or embeddings, one negative per prompt), for one and two text encoders."""
    check_embeds(call.prompt, call.prompt_embeds, call.negative_prompt, call.negative_prompt_embeds,
                 prompt_2=getattr(call, "prompt_2", None), negative_prompt_2=getattr(call, "negative_prompt_2", None))

