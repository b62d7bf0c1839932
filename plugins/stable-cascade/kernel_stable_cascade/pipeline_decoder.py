"""Stable Cascade stage B: the prior's image embeddings (+ the pooled prompt) -> Paella latents -> pixels.

The latents are ``(B, 4, int(h * s), int(w * s))`` for an ``h x w`` embedding, ``s = latent_dim_scale`` (10.67:
24 x 24 -> 256 x 256), decoded by stage A (:class:`PaellaVQModel`, 4x up: 1024 x 1024 pixels).  The decoder UNet
reads the embeddings as ``effnet`` (zeros on the negative side) and the pooled CLIP text embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning
from kernel.outputs import BaseOutput, numpy_to_pil
from kernel.pipeline_utils import batch_size_of

from kernel_stable_cascade.pipeline_common import _CascadeStage, check_text_inputs

DECODER_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: PIL images, a ``(B, H, W, 3)`` array, a ``(B, 3, H, W)`` tensor in ``[0, 1]``, or latents."""

    images: Any = None


class StableCascadeDecoderPipeline(_CascadeStage):
    """Stage B on the kernel's engine.  Subclass hooks: ``_text_encoder_outputs`` / ``_decoder_text`` (text),
    ``_evaluate`` (the denoiser call), ``_latent_shape`` (the latent grid), ``_vae_decode`` (stage A)."""

    model_cpu_offload_seq = "text_encoder->decoder->vqgan"
    _callback_tensor_inputs = ["latents", "prompt_embeds_pooled", "negative_prompt_embeds_pooled",
                               "negative_prompt_embeds", "image_embeddings"]
    _latent_rule = "image embeddings x num_images_per_prompt, 4, int(embedding height x latent_dim_scale), " \
                   "int(embedding width x latent_dim_scale)"

    def __init__(self, decoder, tokenizer, text_encoder, scheduler, vqgan, latent_dim_scale: float = 10.67) -> None:
        self.register_modules(decoder=decoder, tokenizer=tokenizer, text_encoder=text_encoder, scheduler=scheduler,
                              vqgan=vqgan)
        self.register_to_config(latent_dim_scale=latent_dim_scale)

    def _embedding_channels(self) -> int:
        """Channels of the image embeddings the decoder takes (a subclass with another denoiser overrides it)."""
        return self.decoder.config.effnet_in_channels

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        check_text_inputs(call)
        if call.output_type not in DECODER_OUTPUT_TYPES:
            raise ValueError(f"output_type={call.output_type!r} is not supported; use one of {list(DECODER_OUTPUT_TYPES)}")
        embeds = call.image_embeddings
        if isinstance(embeds, (list, tuple)):
            if not embeds or not all(isinstance(e, torch.Tensor) for e in embeds):
                raise TypeError("image_embeddings must be a tensor or a non-empty list of tensors")
            embeds = torch.cat(list(embeds), dim=0)
        if not isinstance(embeds, torch.Tensor):
            raise TypeError(f"image_embeddings must be a tensor or a list of tensors, got {type(embeds).__name__}")
        channels = self._embedding_channels()
        if embeds.ndim != 4 or embeds.shape[1] != channels:
            raise ValueError(f"image_embeddings must be (batch, {channels}, height, width) image embeddings from the "
                             f"prior ({channels} channels: the decoder's effnet_in_channels), got {tuple(embeds.shape)}")
        m = call.num_images_per_prompt
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"num_images_per_prompt must be a positive int, got {m!r}")
        prompts, rows = batch_size_of(call.prompt, call.prompt_embeds), embeds.shape[0]
        if rows != 1 and rows % prompts:
            raise ValueError(f"image_embeddings has {rows} rows for {prompts} prompts; give 1, or a multiple of the "
                             "number of prompts (the prior's images per prompt)")
        # As Diffusers: k embeddings per prompt (the prior's num_images_per_prompt) multiply the images per prompt.
        per_prompt = max(rows // prompts, 1)
        call.text_repeats = m * per_prompt
        call.num_images_per_prompt = m * per_prompt
        batch = prompts * call.text_repeats
        call.image_embeddings = embeds.repeat_interleave(m, dim=0) if rows > 1 else embeds.repeat(batch, 1, 1, 1)

    def _decoder_text(self, side: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The text tensors the decoder reads, of one side of :meth:`_text_conditioning` (Stable Cascade: pooled)."""
        return {"prompt_embeds_pooled": side["prompt_embeds_pooled"]}

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        embeds = call.image_embeddings.to(device=call.device, dtype=self.decoder.dtype)
        pos, neg = self._text_conditioning(call, negative, call.text_repeats)
        pos, neg = self._decoder_text(pos), None if neg is None else self._decoder_text(neg)
        # the embeddings first: their dtype (the decoder's) is the latents' dtype
        positive = {"image_embeddings": embeds, **pos}
        negative_side = None if neg is None else {"image_embeddings": torch.zeros_like(embeds), **neg}
        return Conditioning(positive, negative_side)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        _, _, h, w = call.image_embeddings.shape
        s = self.config.latent_dim_scale
        return (call.batch, 4, int(h * s), int(w * s))

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.decoder(sample=model_input, timestep_ratio=self._ratio(timestep, model_input),
                            clip_text_pooled=cond["prompt_embeds_pooled"], effnet=cond["image_embeddings"],
                            return_dict=False, **kwargs)[0]

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """Stage A: latents -> pixels in ``[0, 1]`` (the codebook is skipped, as the released decoder runs)."""
        z = self.vqgan.denormalize_latents(latents)
        return self.vqgan.decode(z.to(self.vqgan.dtype), return_dict=False)[0].clamp(0, 1)

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        if call.output_type == "latent":
            return latents
        images = self._vae_decode(latents, call)
        if call.output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().float().numpy()
        return array if call.output_type == "np" else numpy_to_pil(array)

    def _output(self, images, call: SimpleNamespace):
        if not call.return_dict:
            return images  # as Diffusers: the images themselves, not a tuple
        return ImagePipelineOutput(images=images)

    # ---------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image_embeddings: torch.Tensor | list[torch.Tensor],
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 0.0,
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
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        return self._generate(locals())
