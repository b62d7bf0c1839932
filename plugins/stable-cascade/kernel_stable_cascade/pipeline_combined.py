"""Stable Cascade in one call: stage C (text -> image embeddings) then stage B + A (embeddings -> image).

The combined pipeline owns both stages' components (the prior's prefixed ``prior_``, Diffusers' folder layout)
and builds the two stage pipelines over the same modules; ``__call__`` runs the prior and hands its embeddings
and text embeddings to the decoder.  Neither stage has a loop of its own: both run the kernel's engine.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from kernel.pipeline import DiffusionPipeline

from kernel_stable_cascade.pipeline_common import StageAEntry
from kernel_stable_cascade.pipeline_decoder import StableCascadeDecoderPipeline
from kernel_stable_cascade.pipeline_prior import StableCascadePriorPipeline


def check_stage_pair(prior: Any, decoder: Any) -> None:
    """Stage C must make image embeddings with the channels stage B reads (``out_channels`` against
    ``effnet_in_channels``); a pair from different releases or configurations is refused when built."""
    made = getattr(getattr(prior, "config", None), "out_channels", None)
    taken = getattr(getattr(decoder, "config", None), "effnet_in_channels", None)
    if made is not None and taken is not None and made != taken:
        raise ValueError(f"prior_prior makes image embeddings of {made} channels (config.out_channels) but the decoder "
                         f"reads {taken} (config.effnet_in_channels); this prior and decoder do not fit (use the "
                         f"stage C released with this stage B)")


class StableCascadeCombinedPipeline(StageAEntry, DiffusionPipeline):
    """Prior then decoder over shared components.  A family with the same two-stage shape (Würstchen) subclasses
    it and sets ``_prior_class`` / ``_decoder_class`` (and its own ``__init__`` for its component names)."""

    pipeline_family = "stable-cascade"
    _load_connected_pipes = True
    _optional_components = ["prior_feature_extractor", "prior_image_encoder"]
    _prior_class: type = StableCascadePriorPipeline
    _decoder_class: type = StableCascadeDecoderPipeline

    def __init__(self, tokenizer, text_encoder, decoder, scheduler, vqgan, prior_prior, prior_text_encoder,
                 prior_tokenizer, prior_scheduler, prior_feature_extractor=None, prior_image_encoder=None) -> None:
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, decoder=decoder, scheduler=scheduler,
                              vqgan=vqgan, prior_text_encoder=prior_text_encoder, prior_tokenizer=prior_tokenizer,
                              prior_prior=prior_prior, prior_scheduler=prior_scheduler,
                              prior_feature_extractor=prior_feature_extractor, prior_image_encoder=prior_image_encoder)
        self.prior_pipe = self._prior_class(prior=prior_prior, text_encoder=prior_text_encoder,
                                            tokenizer=prior_tokenizer, scheduler=prior_scheduler,
                                            image_encoder=prior_image_encoder, feature_extractor=prior_feature_extractor)
        self.decoder_pipe = self._decoder_class(text_encoder=text_encoder, tokenizer=tokenizer, decoder=decoder,
                                                scheduler=scheduler, vqgan=vqgan)
        check_stage_pair(prior_prior, decoder)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    # ---------------------------------------------------------------- CPU offload, stage by stage
    # As in Diffusers, each stage pipeline offloads its own models (its ``model_cpu_offload_seq``): the prior's
    # hooks chain its text encoder and prior, the decoder's its text encoder, decoder and stage A, and each stage
    # puts its models back on the CPU when its call ends.  The switches themselves are kernel-memory's.
    def _stages(self) -> tuple[DiffusionPipeline, DiffusionPipeline]:
        return self.prior_pipe, self.decoder_pipe

    def _offload_stages(self, switch: str, gpu_id: int | None, device: Any) -> None:
        if device is None:
            device = "cuda"
        for stage in self._stages():
            getattr(stage, switch)(gpu_id=gpu_id, device=device)
        self._offload_device = self.prior_pipe._offload_device
        self._offload_kind = self.prior_pipe._offload_kind

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str = "cuda") -> None:
        """Each stage keeps its models on the CPU and moves one whole model to ``device`` when it runs (the stage
        pipelines' ``enable_model_cpu_offload``)."""
        self._offload_stages("enable_model_cpu_offload", gpu_id, device)

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str = "cuda") -> None:
        """Each stage keeps its weights on the CPU and moves each layer's weights to ``device`` only while it runs
        (the stage pipelines' ``enable_sequential_cpu_offload``: the least memory, the most transfers)."""
        self._offload_stages("enable_sequential_cpu_offload", gpu_id, device)

    def maybe_free_model_hooks(self) -> None:
        for stage in self._stages():
            stage.maybe_free_model_hooks()
        super().maybe_free_model_hooks()

    def remove_all_hooks(self) -> None:
        for stage in self._stages():
            stage.remove_all_hooks()
        super().remove_all_hooks()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        images: Any = None,
        height: int = 512,
        width: int = 512,
        prior_num_inference_steps: int = 60,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 12,
        decoder_guidance_scale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_pooled: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_pooled: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        prior_callback_on_step_end: Callable | None = None,
        prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        """``latents`` go to the prior (as in Diffusers); the decoder reads the prior's text embeddings."""
        prior = self.prior_pipe(
            prompt=prompt if prompt_embeds is None else None, images=images, height=height, width=width,
            num_inference_steps=prior_num_inference_steps, guidance_scale=prior_guidance_scale,
            negative_prompt=negative_prompt if negative_prompt_embeds is None else None, prompt_embeds=prompt_embeds,
            prompt_embeds_pooled=prompt_embeds_pooled, negative_prompt_embeds=negative_prompt_embeds,
            negative_prompt_embeds_pooled=negative_prompt_embeds_pooled, num_images_per_prompt=num_images_per_prompt,
            generator=generator, latents=latents, output_type="pt", return_dict=True,
            callback_on_step_end=prior_callback_on_step_end,
            callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs)
        if prior.negative_prompt_embeds is None and isinstance(negative_prompt, list):
            # the decoder's prompts are the prior's rows (num_images_per_prompt each): one negative prompt per row
            negative_prompt = [text for text in negative_prompt for _ in range(num_images_per_prompt)]
        out = self.decoder_pipe(
            image_embeddings=prior.image_embeddings, prompt=None, num_inference_steps=num_inference_steps,
            guidance_scale=decoder_guidance_scale,
            negative_prompt=negative_prompt if prior.negative_prompt_embeds is None else None,
            prompt_embeds=prior.prompt_embeds, prompt_embeds_pooled=prior.prompt_embeds_pooled,
            negative_prompt_embeds=prior.negative_prompt_embeds,
            negative_prompt_embeds_pooled=prior.negative_prompt_embeds_pooled, generator=generator,
            output_type=output_type, return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        self.maybe_free_model_hooks()
        return out
