"""Stable Diffusion 3 / 3.5 pipelines: text-to-image, image-to-image, inpainting.

Rectified flow (Esser et al., arXiv:2403.03206): the transformer predicts the velocity
``noise - x0`` and a flow-matching scheduler integrates it from pure noise (sigma 1) to the image.
The loop, guidance (classifier-free; skip-layer guidance for SD3.5 through ``skip_guidance_layers``)
and the image-to-image / inpainting tasks are the kernel's; this module gives SD3's conditioning
(two CLIP encoders and T5) and how the MMDiT is evaluated.
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
from kernel.pipeline_utils import check_output_type, check_pooled, check_prompts, check_size, check_unsupported
from kernel.pipeline_utils import retrieve_timesteps
from kernel_guiders import PAGMixin
from kernel_lora import SD3LoraLoaderMixin
from kernel_sched_flow_match import calculate_shift
from kernel_t5 import check_max_sequence_length

from kernel_sd3.encoding import encode_prompt as _encode_prompt


@dataclass
class StableDiffusion3PipelineOutput(BaseOutput):
    """``images``: a list of PIL images, an ``(N, H, W, 3)`` array, a tensor, or latents."""

    images: Any


class _SD3Base(SD3LoraLoaderMixin, DiffusionPipeline):
    pipeline_family = "stable-diffusion-3"
    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor", "text_encoder_3", "tokenizer_3"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]
    _floor_kept_steps = False

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3=None, tokenizer_3=None, image_encoder=None, feature_extractor=None):
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              text_encoder_3=text_encoder_3, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                              tokenizer_3=tokenizer_3, transformer=transformer, scheduler=scheduler,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.vae_scale_factor = vae.spatial_compression_ratio if vae is not None else 8
        latent_channels = vae.config.latent_channels if vae is not None else 16
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor,
                                                 vae_latent_channels=latent_channels)
        self.mask_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor,
                                                vae_latent_channels=latent_channels, do_normalize=False,
                                                do_binarize=True, do_convert_grayscale=True)
        self.tokenizer_max_length = tokenizer.model_max_length if tokenizer is not None else 77
        self.default_sample_size = transformer.config.sample_size if transformer is not None else 128
        self.patch_size = transformer.config.patch_size if transformer is not None else 2

    def encode_prompt(self, prompt, prompt_2=None, prompt_3=None, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None, negative_prompt_2=None,
                      negative_prompt_3=None, prompt_embeds=None, negative_prompt_embeds=None,
                      pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, clip_skip=None,
                      max_sequence_length: int = 256, lora_scale=None):
        return _encode_prompt(self, prompt, prompt_2, prompt_3, device, num_images_per_prompt,
                              do_classifier_free_guidance, negative_prompt, negative_prompt_2, negative_prompt_3,
                              prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                              negative_pooled_prompt_embeds, clip_skip, max_sequence_length, lora_scale)

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        check_unsupported(type(self).__name__, ip_adapter_image=call.ip_adapter_image,
                          ip_adapter_image_embeds=call.ip_adapter_image_embeds)
        default = self.default_sample_size * self.vae_scale_factor
        call.height, call.width = call.height or default, call.width or default
        check_size(call.height, call.width, self.vae_scale_factor * self.patch_size,
                   f"VAE factor {self.vae_scale_factor} x patch size {self.patch_size}")
        check_prompts({"prompt": call.prompt, "prompt_2": call.prompt_2, "prompt_3": call.prompt_3},
                      call.prompt_embeds, {"negative_prompt": call.negative_prompt,
                                           "negative_prompt_2": call.negative_prompt_2,
                                           "negative_prompt_3": call.negative_prompt_3}, call.negative_prompt_embeds)
        check_pooled(call.prompt_embeds, call.pooled_prompt_embeds, call.negative_prompt_embeds,
                     call.negative_pooled_prompt_embeds, self.transformer.config.pooled_projection_dim)
        check_max_sequence_length(call.max_sequence_length)
        check_output_type(call.output_type)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        pos, neg, pooled, neg_pooled = self.encode_prompt(
            call.prompt, call.prompt_2, call.prompt_3, call.device, call.num_images_per_prompt, negative,
            call.negative_prompt, call.negative_prompt_2, call.negative_prompt_3, call.prompt_embeds,
            call.negative_prompt_embeds, call.pooled_prompt_embeds, call.negative_pooled_prompt_embeds,
            call.clip_skip, call.max_sequence_length)
        return Conditioning({"prompt_embeds": pos, "pooled_prompt_embeds": pooled},
                            {"prompt_embeds": neg, "pooled_prompt_embeds": neg_pooled} if negative else None)

    def _retrieve_timesteps(self, call: SimpleNamespace):
        """Sigmas shifted for the image size (``mu``) when the scheduler uses dynamic shifting."""
        kwargs, mu = {}, call.mu
        if mu is None and self.scheduler.config.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            seq = (int(call.height) // self.vae_scale_factor // patch) * (int(call.width) // self.vae_scale_factor // patch)
            cfg = self.scheduler.config
            mu = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        if mu is not None:
            kwargs["mu"] = mu
        return retrieve_timesteps(self.scheduler, call.num_inference_steps, call.device, sigmas=call.sigmas, **kwargs)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return call.batch, self.vae.config.latent_channels, call.height // f, call.width // f

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.transformer(hidden_states=model_input, timestep=timestep.expand(model_input.shape[0]),
                                encoder_hidden_states=cond["prompt_embeds"],
                                pooled_projections=cond["pooled_prompt_embeds"],
                                joint_attention_kwargs=self.joint_attention_kwargs, return_dict=False, **kwargs)[0]

    def _output(self, images: Any, call: SimpleNamespace):
        return StableDiffusion3PipelineOutput(images=images) if call.return_dict else (images,)


class StableDiffusion3Pipeline(_SD3Base):
    """Text-to-image with SD3 / SD3.5 (Diffusers' arguments, defaults and numbers).

    ``skip_guidance_layers`` turns on skip-layer guidance (SD3.5-medium's recipe) when classifier-free
    guidance is on; ``pipe.guider = SkipLayerGuidance(...)`` sets it up as a component instead.
    """

    def _default_guider(self, call: SimpleNamespace):
        cfg = super()._default_guider(call)
        if call.skip_guidance_layers is None or not cfg.uses_negative:
            return cfg
        from kernel.registry import get_registry

        slg = get_registry().resolve("SkipLayerGuidance")
        return slg(guidance_scale=call.guidance_scale, skip_layer_guidance_scale=call.skip_layer_guidance_scale,
                   skip_layer_guidance_start=call.skip_layer_guidance_start,
                   skip_layer_guidance_stop=call.skip_layer_guidance_stop,
                   skip_layer_guidance_layers=list(call.skip_guidance_layers))

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, prompt_3=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, sigmas=None, guidance_scale: float = 7.0, negative_prompt=None,
                 negative_prompt_2=None, negative_prompt_3=None, num_images_per_prompt: int = 1, generator=None,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, joint_attention_kwargs=None, clip_skip=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int = 256, skip_guidance_layers=None, skip_layer_guidance_scale: float = 2.8,
                 skip_layer_guidance_stop: float = 0.2, skip_layer_guidance_start: float = 0.01, mu=None):
        return self._generate(locals())


class StableDiffusion3Img2ImgPipeline(_SD3Base):
    """Image-to-image with SD3: ``image`` noised to ``strength``, then denoised under the prompt."""

    _task = "image2image"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"]

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, prompt_3=None, height: int | None = None, width: int | None = None,
                 image=None, strength: float = 0.6, num_inference_steps: int = 50, sigmas=None,
                 guidance_scale: float = 7.0, negative_prompt=None, negative_prompt_2=None, negative_prompt_3=None,
                 num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                 output_type: str = "pil", ip_adapter_image=None, ip_adapter_image_embeds=None,
                 return_dict: bool = True, joint_attention_kwargs=None, clip_skip=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int = 256, mu=None):
        return self._generate(locals())


class StableDiffusion3InpaintPipeline(_SD3Base):
    """Inpainting with SD3: white pixels of ``mask_image`` are repainted; the rest is kept.

    A 16-channel transformer re-noises the known region after every step; a 33-channel one
    (trained for inpainting) takes the mask and masked-image latents as extra input channels.
    """

    _task = "inpainting"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
                               "mask", "masked_image_latents"]

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        # Diffusers' SD3 inpainting decodes without the VAE shift; kept for identical images.
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, prompt_3=None, image=None, mask_image=None,
                 masked_image_latents=None, height: int | None = None, width: int | None = None,
                 padding_mask_crop: int | None = None, strength: float = 0.6, num_inference_steps: int = 50,
                 sigmas=None, guidance_scale: float = 7.0, negative_prompt=None, negative_prompt_2=None,
                 negative_prompt_3=None, num_images_per_prompt: int = 1, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, joint_attention_kwargs=None, clip_skip=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int = 256, mu=None):
        return self._generate(locals())


class StableDiffusion3PAGPipeline(PAGMixin, StableDiffusion3Pipeline):
    """SD3 text-to-image with perturbed-attention guidance (``pag_applied_layers`` default ``"blocks.1"``)."""

    _pag_default_layers = "blocks.1"


class StableDiffusion3PAGImg2ImgPipeline(PAGMixin, StableDiffusion3Img2ImgPipeline):
    """SD3 image-to-image with perturbed-attention guidance."""

    _pag_default_layers = "blocks.1"
