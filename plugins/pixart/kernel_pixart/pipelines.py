"""PixArt-alpha and PixArt-Sigma text-to-image pipelines.

T5 captions (masked, lower-cased; at most 120 tokens for alpha, 300 for Sigma by default) condition
the transformer through cross-attention; classifier-free guidance runs the negative and positive
prompts as one batch.  With ``use_resolution_binning`` a request is generated at the nearest
trained aspect-ratio bucket (:mod:`kernel_pixart.aspect_ratios`) and resized/cropped back.  The
1024px PixArt-alpha models also take the (binned) resolution and aspect ratio as conditions.
The loop and guidance are the kernel's (:mod:`kernel.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from kernel.engine import Conditioning
from kernel_autoencoders.image_processor import VaeImageProcessor
from kernel.outputs import BaseOutput
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_output_type, check_prompts, check_size
from kernel_guiders import PAGMixin
from kernel_lora import PixArtLoraLoaderMixin
from kernel_t5 import check_max_sequence_length, encode_prompt_with_mask

from kernel_pixart.aspect_ratios import BINS_BY_SAMPLE_SIZE, closest_bin, resize_and_crop


@dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: a list of PIL images, an ``(N, H, W, 3)`` array, a tensor, or latents."""

    images: Any


class PixArtAlphaPipeline(PixArtLoraLoaderMixin, DiffusionPipeline):
    """PixArt-alpha text-to-image (Diffusers' arguments, defaults and numbers)."""

    pipeline_family = "pixart"
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "prompt_attention_mask"]
    _default_max_sequence_length = 120
    _floor_kept_steps = False

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        self.vae_scale_factor = vae.spatial_compression_ratio if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def encode_prompt(self, prompt, do_classifier_free_guidance: bool = True, negative_prompt="",
                      num_images_per_prompt: int = 1, device=None, prompt_embeds=None, negative_prompt_embeds=None,
                      prompt_attention_mask=None, negative_prompt_attention_mask=None, clean_caption: bool = False,
                      max_sequence_length: int = 120, **kwargs):
        """``(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)``.

        ``clean_caption`` (the reference's bs4/ftfy caption scrubbing) is not implemented; captions are
        lower-cased and stripped, which is what the reference does when those packages are absent.
        """
        dtype = self.transformer.dtype if self.transformer is not None else None
        return encode_prompt_with_mask(
            self.tokenizer, self.text_encoder, prompt, do_classifier_free_guidance, negative_prompt,
            num_images_per_prompt, device or self._execution_device, prompt_embeds, negative_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask, max_sequence_length, dtype=dtype)

    def _bins(self):
        size = self.transformer.config.sample_size
        if size not in BINS_BY_SAMPLE_SIZE:
            raise ValueError(f"use_resolution_binning=True needs a transformer sample_size in "
                             f"{sorted(BINS_BY_SAMPLE_SIZE)}, got {size}; pass use_resolution_binning=False")
        return BINS_BY_SAMPLE_SIZE[size]

    def _size_conditions(self, call: SimpleNamespace) -> dict[str, torch.Tensor]:
        """The 1024px PixArt-alpha models' (binned) resolution and aspect-ratio conditions, one row per image."""
        if not self.transformer.config.sample_size == 128:
            return {}
        kw = dict(dtype=call.dtype, device=call.device)
        return {"resolution": torch.tensor([call.height, call.width]).repeat(call.batch, 1).to(**kw),
                "aspect_ratio": torch.tensor([float(call.height / call.width)]).repeat(call.batch, 1).to(**kw)}

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        unknown = [k for k in call.kwargs if k != "mask_feature"]
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {unknown}")
        call.max_sequence_length = call.max_sequence_length or self._default_max_sequence_length
        default = self.transformer.config.sample_size * self.vae_scale_factor
        call.height, call.width = call.height or default, call.width or default
        call.orig_height, call.orig_width = call.height, call.width
        if call.use_resolution_binning:
            call.height, call.width = closest_bin(call.height, call.width, self._bins())
        patch = self.transformer.config.patch_size
        check_size(call.height, call.width, self.vae_scale_factor * patch,
                   f"VAE factor {self.vae_scale_factor} x patch size {patch}")
        if not isinstance(call.callback_steps, int) or call.callback_steps <= 0:
            raise ValueError(f"callback_steps must be a positive int, got {call.callback_steps!r}")
        check_prompts({"prompt": call.prompt}, call.prompt_embeds, {"negative_prompt": call.negative_prompt or None},
                      call.negative_prompt_embeds)
        if call.prompt_embeds is not None and call.prompt_attention_mask is None:
            raise ValueError("prompt_embeds needs prompt_attention_mask (the T5 padding mask) alongside it")
        if call.negative_prompt_embeds is not None and call.negative_prompt_attention_mask is None:
            raise ValueError("negative_prompt_embeds needs negative_prompt_attention_mask alongside it")
        if call.prompt_attention_mask is not None and call.negative_prompt_attention_mask is not None and \
                call.prompt_attention_mask.shape != call.negative_prompt_attention_mask.shape:
            raise ValueError("prompt_attention_mask and negative_prompt_attention_mask must have the same shape")
        check_max_sequence_length(call.max_sequence_length)
        check_output_type(call.output_type)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        embeds, mask, neg, neg_mask = self.encode_prompt(
            call.prompt, negative, call.negative_prompt, call.num_images_per_prompt, call.device, call.prompt_embeds,
            call.negative_prompt_embeds, call.prompt_attention_mask, call.negative_prompt_attention_mask,
            call.clean_caption, call.max_sequence_length)
        return Conditioning({"prompt_embeds": embeds, "prompt_attention_mask": mask},
                            {"prompt_embeds": neg, "prompt_attention_mask": neg_mask} if negative else None)

    def _late_conditioning(self, call: SimpleNamespace, cond: Conditioning, latents: torch.Tensor) -> None:
        sizes = self._size_conditions(call)  # the same for the negative prompt's rows
        for side in (cond.positive, cond.negative or {}):
            side.update(sizes)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return call.batch, self.transformer.config.in_channels, call.height // f, call.width // f

    def _output_index(self, steps: int) -> int:
        return 1 if steps == 1 else 0  # one step: continue from the predicted clean sample

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        sizes = {"resolution": cond.get("resolution"), "aspect_ratio": cond.get("aspect_ratio")}
        timestep = (timestep[None] if timestep.ndim == 0 else timestep).to(model_input.device)
        out = self.transformer(model_input, encoder_hidden_states=cond["prompt_embeds"],
                               encoder_attention_mask=cond["prompt_attention_mask"],
                               timestep=timestep.expand(model_input.shape[0]), added_cond_kwargs=sizes,
                               return_dict=False, **kwargs)[0]
        learned_sigma = self.transformer.config.out_channels // 2 == self.transformer.config.in_channels
        return out.chunk(2, dim=1)[0] if learned_sigma else out

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        images = super()._vae_decode(latents, call)
        return resize_and_crop(images, call.orig_width, call.orig_height) if call.use_resolution_binning else images

    def _output(self, images: Any, call: SimpleNamespace):
        return ImagePipelineOutput(images=images) if call.return_dict else (images,)

    @torch.no_grad()
    def __call__(self, prompt=None, negative_prompt: str = "", num_inference_steps: int = 20, timesteps=None,
                 sigmas=None, guidance_scale: float = 4.5, num_images_per_prompt: int = 1, height: int | None = None,
                 width: int | None = None, eta: float = 0.0, generator=None, latents=None, prompt_embeds=None,
                 prompt_attention_mask=None, negative_prompt_embeds=None, negative_prompt_attention_mask=None,
                 output_type: str = "pil", return_dict: bool = True, callback=None, callback_steps: int = 1,
                 clean_caption: bool = True, use_resolution_binning: bool = True, max_sequence_length: int | None = None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",), **kwargs):
        return self._generate(locals())


class PixArtSigmaPipeline(PixArtAlphaPipeline):
    """PixArt-Sigma text-to-image: 300-token captions, bins up to 2048px, no size conditioning."""

    _default_max_sequence_length = 300

    def _size_conditions(self, call: SimpleNamespace) -> dict[str, torch.Tensor]:
        return {}


class PixArtSigmaPAGPipeline(PAGMixin, PixArtSigmaPipeline):
    """PixArt-Sigma with perturbed-attention guidance (``pag_applied_layers`` default ``"blocks.1"``)."""

    _pag_default_layers = "blocks.1"
