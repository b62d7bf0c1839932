"""Stable Diffusion 3 / 3.5 pipelines: text-to-image, image-to-image, inpainting.

Rectified flow (Esser et al., arXiv:2403.03206): the transformer predicts the velocity
``noise - x0`` and a flow-matching scheduler integrates it from pure noise (sigma 1) to the
image.  True classifier-free guidance (Ho & Salimans, arXiv:2207.12598) runs the negative and
positive prompts as one batch.  Image-to-image starts from the encoded image noised to the
first kept sigma (SDEdit, Meng et al., arXiv:2108.01073); inpainting additionally pastes the
re-noised known region back after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernel.image_processor import VaeImageProcessor
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_dit_common import (
    TransformerPipeline,
    check_generators,
    check_output_type,
    check_pooled,
    check_prompts,
    check_size,
    check_steps_left,
    check_strength,
    effective_batch,
    repeat_to_batch,
    retrieve_timesteps,
    sample_latents,
    strength_timesteps,
    to_model_latents,
)
from kernel_sched_flow_match import calculate_shift
from kernel_t5 import check_max_sequence_length

from kernel_sd3.encoding import encode_prompt as _encode_prompt


@dataclass
class StableDiffusion3PipelineOutput(BaseOutput):
    """``images``: a list of PIL images, an ``(N, H, W, 3)`` array, a tensor, or latents."""

    images: Any


class _SD3Base(TransformerPipeline):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor", "text_encoder_3", "tokenizer_3"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3=None, tokenizer_3=None, image_encoder=None, feature_extractor=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              text_encoder_3=text_encoder_3, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                              tokenizer_3=tokenizer_3, transformer=transformer, scheduler=scheduler,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
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

    # ---------------------------------------------------------------- shared steps
    def _check(self, prompts, negatives, height, width, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
               negative_pooled_prompt_embeds, callback, names, max_sequence_length, output_type):
        check_size(height, width, self.vae_scale_factor * self.patch_size,
                   f"VAE factor {self.vae_scale_factor} x patch size {self.patch_size}")
        check_prompts(prompts, prompt_embeds, negatives, negative_prompt_embeds)
        check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                     self.transformer.config.pooled_projection_dim)
        check_max_sequence_length(max_sequence_length)
        check_output_type(output_type)
        return self._callback_names(callback, names)

    def _conditioning(self, prompt, prompt_2, prompt_3, negative_prompt, negative_prompt_2, negative_prompt_3,
                      prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                      num_images_per_prompt, clip_skip, max_sequence_length):
        device = self._execution_device
        pos, neg, pooled, neg_pooled = self.encode_prompt(
            prompt, prompt_2, prompt_3, device, num_images_per_prompt, self.do_classifier_free_guidance,
            negative_prompt, negative_prompt_2, negative_prompt_3, prompt_embeds, negative_prompt_embeds,
            pooled_prompt_embeds, negative_pooled_prompt_embeds, clip_skip, max_sequence_length)
        if self.do_classifier_free_guidance:
            return torch.cat([neg, pos]), torch.cat([neg_pooled, pooled])
        return pos, pooled

    def _schedule(self, num_inference_steps, sigmas, mu, height, width, strength=None):
        """``(timesteps, steps)``, shifted for the image size; trimmed by ``strength`` when given (img2img)."""
        kwargs = {}
        if mu is None and self.scheduler.config.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            seq = (int(height) // self.vae_scale_factor // patch) * (int(width) // self.vae_scale_factor // patch)
            cfg = self.scheduler.config
            mu = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        if mu is not None:
            kwargs["mu"] = mu
        timesteps, steps = retrieve_timesteps(self.scheduler, num_inference_steps, self._execution_device,
                                              sigmas=sigmas, **kwargs)
        if strength is not None:
            timesteps, steps = strength_timesteps(self.scheduler, steps, strength)
            check_steps_left(steps, strength)
        return timesteps, steps

    def _predictor(self, state: dict, extra_channels=None):
        def predict(latents, t):
            model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
            timestep = t.expand(model_input.shape[0])
            if extra_channels is not None:
                model_input = torch.cat([model_input, *extra_channels()], dim=1)
            out = self.transformer(hidden_states=model_input, timestep=timestep,
                                   encoder_hidden_states=state["prompt_embeds"],
                                   pooled_projections=state["pooled_prompt_embeds"],
                                   joint_attention_kwargs=self.joint_attention_kwargs, return_dict=False)[0]
            if self.do_classifier_free_guidance:
                uncond, cond = out.chunk(2)
                out = uncond + self.guidance_scale * (cond - uncond)
            return out
        return predict

    def _begin(self, guidance_scale, clip_skip, joint_attention_kwargs):
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._joint_attention_kwargs = joint_attention_kwargs
        self._interrupt = False

    @property
    def clip_skip(self):
        return self._clip_skip

    def _finish(self, images, return_dict):
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return StableDiffusion3PipelineOutput(images=images)


class StableDiffusion3Pipeline(_SD3Base):
    """Text-to-image with SD3 / SD3.5 (Diffusers' arguments, defaults and numbers)."""

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
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            raise ValueError("IP-Adapter inputs are not supported by this SD3 pipeline yet")
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        names = self._check({"prompt": prompt, "prompt_2": prompt_2, "prompt_3": prompt_3},
                            {"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2,
                             "negative_prompt_3": negative_prompt_3}, height, width, prompt_embeds,
                            negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                            callback_on_step_end, list(callback_on_step_end_tensor_inputs), max_sequence_length,
                            output_type)
        self._begin(guidance_scale, clip_skip, joint_attention_kwargs)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        check_generators(generator, batch)
        embeds, pooled = self._conditioning(prompt, prompt_2, prompt_3, negative_prompt, negative_prompt_2,
                                            negative_prompt_3, prompt_embeds, negative_prompt_embeds,
                                            pooled_prompt_embeds, negative_pooled_prompt_embeds,
                                            num_images_per_prompt, clip_skip, max_sequence_length)
        device = self._execution_device
        shape = (batch, self.transformer.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype) if latents is None \
            else latents.to(device=device, dtype=embeds.dtype)
        timesteps, steps = self._schedule(num_inference_steps, sigmas, mu, height, width)
        state = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        predict = self._predictor(state)
        if skip_guidance_layers is not None and self.do_classifier_free_guidance:
            predict = self._with_skip_layer_guidance(predict, state, timesteps, steps, skip_guidance_layers,
                                                     skip_layer_guidance_scale, skip_layer_guidance_start,
                                                     skip_layer_guidance_stop)
        latents = self.denoise(latents, timesteps, steps, predict, state, callback_on_step_end, names)
        return self._finish(self.decode(latents, output_type), return_dict)

    def _with_skip_layer_guidance(self, predict, state, timesteps, steps, layers, scale, start, stop):
        """Skip-layer guidance (SD3.5): push away from the prediction with ``layers`` skipped, in a step window."""
        batch = state["prompt_embeds"].shape[0] // 2
        index = {"i": 0}

        def guided(latents, t):
            i = index["i"]
            index["i"] += 1
            model_input = torch.cat([latents] * 2)
            out = self.transformer(hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
                                   encoder_hidden_states=state["prompt_embeds"],
                                   pooled_projections=state["pooled_prompt_embeds"],
                                   joint_attention_kwargs=self.joint_attention_kwargs, return_dict=False)[0]
            uncond, cond = out.chunk(2)
            guided_out = uncond + self.guidance_scale * (cond - uncond)
            if steps * start < i < steps * stop:
                skipped = self.transformer(hidden_states=latents, timestep=t.expand(latents.shape[0]),
                                           encoder_hidden_states=state["prompt_embeds"][batch:],
                                           pooled_projections=state["pooled_prompt_embeds"][batch:],
                                           joint_attention_kwargs=self.joint_attention_kwargs, return_dict=False,
                                           skip_layers=layers)[0]
                guided_out = guided_out + (cond - skipped) * scale
            return guided_out
        return guided


class StableDiffusion3Img2ImgPipeline(_SD3Base):
    """Image-to-image with SD3: ``image`` noised to ``strength``, then denoised under the prompt."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"]

    def _image_latents(self, image, batch, dtype, generator):
        image = image.to(device=self._execution_device, dtype=dtype)
        if image.shape[1] == self.vae.config.latent_channels:
            return repeat_to_batch(image, batch, "images")
        check_generators(generator, batch)
        return repeat_to_batch(to_model_latents(self.vae, sample_latents(self.vae, image, generator)), batch, "images")

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, prompt_3=None, height: int | None = None, width: int | None = None,
                 image=None, strength: float = 0.6, num_inference_steps: int = 50, sigmas=None,
                 guidance_scale: float = 7.0, negative_prompt=None, negative_prompt_2=None, negative_prompt_3=None,
                 num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                 output_type: str = "pil", ip_adapter_image=None, ip_adapter_image_embeds=None,
                 return_dict: bool = True, joint_attention_kwargs=None, clip_skip=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int = 256, mu=None):
        if image is None:
            raise ValueError("image is required for image-to-image (a PIL image, array, tensor or list of them)")
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        check_strength(strength)
        names = self._check({"prompt": prompt, "prompt_2": prompt_2, "prompt_3": prompt_3},
                            {"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2,
                             "negative_prompt_3": negative_prompt_3}, height, width, prompt_embeds,
                            negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                            callback_on_step_end, list(callback_on_step_end_tensor_inputs), max_sequence_length,
                            output_type)
        self._begin(guidance_scale, clip_skip, joint_attention_kwargs)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        embeds, pooled = self._conditioning(prompt, prompt_2, prompt_3, negative_prompt, negative_prompt_2,
                                            negative_prompt_3, prompt_embeds, negative_prompt_embeds,
                                            pooled_prompt_embeds, negative_pooled_prompt_embeds,
                                            num_images_per_prompt, clip_skip, max_sequence_length)
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        timesteps, steps = self._schedule(num_inference_steps, sigmas, mu, height, width, strength)
        if latents is None:
            start = self._image_latents(pixels, batch, embeds.dtype, generator)
            noise = randn_tensor(start.shape, generator=generator, device=start.device, dtype=embeds.dtype)
            latents = self.scheduler.scale_noise(start, timesteps[:1].repeat(batch), noise).to(embeds.dtype)
        state = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        latents = self.denoise(latents, timesteps, steps, self._predictor(state), state, callback_on_step_end, names)
        return self._finish(self.decode(latents, output_type), return_dict)


class StableDiffusion3InpaintPipeline(StableDiffusion3Img2ImgPipeline):
    """Inpainting with SD3: white pixels of ``mask_image`` are repainted; the rest is kept.

    A 16-channel transformer re-noises the known region after every step; a 33-channel one
    (trained for inpainting) takes the mask and masked-image latents as extra input channels.
    """

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
                               "mask", "masked_image_latents"]

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
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both image and mask_image")
        height = height or self.transformer.config.sample_size * self.vae_scale_factor
        width = width or self.transformer.config.sample_size * self.vae_scale_factor
        check_strength(strength)
        names = self._check({"prompt": prompt, "prompt_2": prompt_2, "prompt_3": prompt_3},
                            {"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2,
                             "negative_prompt_3": negative_prompt_3}, height, width, prompt_embeds,
                            negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                            callback_on_step_end, list(callback_on_step_end_tensor_inputs), max_sequence_length,
                            output_type)
        channels = self.transformer.config.in_channels
        latent_channels = self.vae.config.latent_channels
        if channels not in (16, 33):
            raise ValueError(f"SD3 inpainting needs a transformer with 16 or 33 input channels, got {channels}")
        self._begin(guidance_scale, clip_skip, joint_attention_kwargs)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        check_generators(generator, batch)
        device = self._execution_device
        embeds, pooled = self._conditioning(prompt, prompt_2, prompt_3, negative_prompt, negative_prompt_2,
                                            negative_prompt_3, prompt_embeds, negative_prompt_embeds,
                                            pooled_prompt_embeds, negative_pooled_prompt_embeds,
                                            num_images_per_prompt, clip_skip, max_sequence_length)
        dtype = embeds.dtype
        timesteps, steps = self._schedule(num_inference_steps, sigmas, mu, height, width, strength)
        crops, resize_mode = None, "default"
        if padding_mask_crop is not None:
            crops = self.mask_processor.get_crop_region(mask_image, width, height, pad=padding_mask_crop)
            resize_mode = "fill"
        pixels = self.image_processor.preprocess(image, height=height, width=width, crops_coords=crops,
                                                 resize_mode=resize_mode).to(torch.float32)
        full_strength = strength == 1.0
        need_image_latents = channels == 16 or (latents is None and not full_strength)
        image_latents = None
        if need_image_latents:
            pix = pixels.to(device=device, dtype=dtype)
            image_latents = pix if pix.shape[1] == 16 else to_model_latents(self.vae, sample_latents(self.vae, pix, generator))
            image_latents = image_latents.repeat(batch // image_latents.shape[0], 1, 1, 1)
        shape = (batch, latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = noise if full_strength else self.scheduler.scale_noise(image_latents, timesteps[:1].repeat(batch), noise)
        else:
            noise = latents = latents.to(device)

        mask_condition = self.mask_processor.preprocess(mask_image, height=height, width=width,
                                                        resize_mode=resize_mode, crops_coords=crops)
        masked = pixels * (mask_condition < 0.5) if masked_image_latents is None else masked_image_latents
        mask = torch.nn.functional.interpolate(mask_condition, size=(height // self.vae_scale_factor,
                                                                     width // self.vae_scale_factor))
        mask = repeat_to_batch(mask.to(device=device, dtype=dtype), batch, "masks")
        masked = masked.to(device=device, dtype=dtype)
        masked_latents = masked if masked.shape[1] == 16 else to_model_latents(
            self.vae, sample_latents(self.vae, masked, generator))
        masked_latents = repeat_to_batch(masked_latents, batch, "images").to(device=device, dtype=dtype)
        if self.do_classifier_free_guidance:
            mask, masked_latents = torch.cat([mask] * 2), torch.cat([masked_latents] * 2)
        state = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "mask": mask,
                 "masked_image_latents": masked_latents, "negative_prompt_embeds": None,
                 "negative_pooled_prompt_embeds": None}
        extra = None
        if channels == 33:
            if latent_channels + mask.shape[1] + masked_latents.shape[1] != channels:
                raise ValueError(f"the transformer takes {channels} channels but latents ({latent_channels}), mask "
                                 f"({mask.shape[1]}) and masked image ({masked_latents.shape[1]}) give a different sum")
            extra = lambda: (state["mask"], state["masked_image_latents"])  # noqa: E731

        def blend(i, current):
            if channels != 16:
                return current
            known = image_latents
            keep = state["mask"].chunk(2)[0] if self.do_classifier_free_guidance else state["mask"]
            if i < len(timesteps) - 1:
                known = self.scheduler.scale_noise(known, timesteps[i + 1:i + 2], noise)
            return (1 - keep) * known + keep * current

        latents = self.denoise(latents, timesteps, steps, self._predictor(state, extra), state, callback_on_step_end,
                               names, blend=blend)
        if output_type == "latent":
            images = latents
        else:
            # Diffusers' SD3 inpainting decodes without the VAE shift; kept for identical images.
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
            if padding_mask_crop is not None:
                images = [self.image_processor.apply_overlay(mask_image, image, im, crops) for im in images]
        return self._finish(images, return_dict)
