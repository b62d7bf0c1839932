"""Kandinsky 3 (Arkhipkin et al., arXiv:2312.03511): T5 text tokens -> :class:`Kandinsky3UNet` over MoVQ latents.

Diffusers' signature over the kernel's one generation path (:meth:`kernel.tasks.TaskMixin._generate`); the
family supplies the hooks:

* prompts are tokenized to 128 tokens and encoded by the T5 encoder with its attention mask; padding
  embeddings are zeroed and the tokens cut one past the longest prompt.  The negative side is the
  encoded ``negative_prompt`` (cut to the same length) or, without one, all-zero embeddings with an
  all-zero mask.  Embeddings passed in (``prompt_embeds``) need their ``attention_mask``.
* guidance: Kandinsky 3's rule ``(s + 1) * cond - s * uncond`` is classifier-free guidance at scale
  ``s + 1``, on only while ``guidance_scale > 1``.
* the latent grid is ``ceil(height / 64) * 8`` by ``ceil(width / 64) * 8`` with 4 channels (Diffusers'
  fixed factor 8, whatever the MoVQ), decoded by MoVQ without quantisation; ``output_type="pt"`` is the
  decoder's output in [-1, 1], as in Diffusers.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable

import PIL.Image
import torch

from kernel.engine import Conditioning
from kernel.pipeline import DiffusionPipeline
from kernel.tasks import NoGuidance
from kernel_autoencoders.image_processor import VaeImageProcessor

from kernel_kandinsky.guidance import unscaled_model_input
from kernel_kandinsky.outputs import ImagePipelineOutput

MAX_TOKENS = 128
_LATENT_FACTOR = 8  # Diffusers' latent-grid rule, independent of the MoVQ's own factor


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.repeat_interleave(n, dim=0) if n > 1 else x


class Kandinsky3Pipeline(DiffusionPipeline):
    """Text-to-image with Kandinsky 3."""

    pipeline_family = "kandinsky3"
    model_cpu_offload_seq = "text_encoder->unet->movq"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_attention_mask",
                               "attention_mask"]
    #: Diffusers' text-to-image returns ``output_type="pt"`` in [-1, 1] (the decoder's output); image-to-image
    #: returns [0, 1].  Kept for identical numbers.
    _raw_pt_output = True

    def __init__(self, tokenizer, text_encoder, unet, scheduler, movq) -> None:
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                              movq=movq)
        self.movq_scale_factor = 2 ** (len(movq.config.block_out_channels) - 1) if movq is not None else 8
        self.vae_scale_factor = _LATENT_FACTOR
        channels = movq.config.latent_channels if movq is not None else 4
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.movq_scale_factor, vae_latent_channels=channels,
                                                 resample="bicubic", reducing_gap=1)

    @property
    def vae(self):
        """The kernel's tasks reach the autoencoder as ``vae``; Kandinsky calls it ``movq``."""
        return self.movq

    # ---------------------------------------------------------------- prompts
    def _t5(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        return self.text_encoder(ids, attention_mask=mask)[0], mask

    @torch.no_grad()
    def encode_prompt(self, prompt, do_classifier_free_guidance: bool = True, num_images_per_prompt: int = 1,
                      device=None, negative_prompt=None, prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None, _cut_context: bool = False,
                      attention_mask: torch.Tensor | None = None, negative_attention_mask: torch.Tensor | None = None):
        """Returns ``(prompt_embeds, negative_prompt_embeds, attention_mask, negative_attention_mask)``, one row
        per image; the negative pair is ``None`` without guidance."""
        device = device or self._execution_device
        if prompt is not None and negative_prompt is not None and type(prompt) is not type(negative_prompt):
            raise TypeError(f"negative_prompt must be of the same type as prompt ({type(prompt).__name__}), "
                            f"got {type(negative_prompt).__name__}")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompt_embeds is None:
            prompt_embeds, attention_mask = self._t5(list(prompts), device)
            if _cut_context:
                prompt_embeds = prompt_embeds.masked_fill(attention_mask[..., None] == 0, 0.0)
                keep = int(attention_mask.sum(-1).max()) + 1
                prompt_embeds, attention_mask = prompt_embeds[:, :keep], attention_mask[:, :keep]
            prompt_embeds = prompt_embeds * attention_mask.unsqueeze(2)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else prompt_embeds.dtype
        batch = prompt_embeds.shape[0]
        n = num_images_per_prompt
        prompt_embeds = _rows(prompt_embeds.to(device=device, dtype=dtype), n)
        attention_mask = _rows(attention_mask.to(device), n)
        if not do_classifier_free_guidance:
            return prompt_embeds, None, attention_mask, None
        if negative_prompt_embeds is None:
            if negative_prompt is None:
                return prompt_embeds, torch.zeros_like(prompt_embeds), attention_mask, torch.zeros_like(attention_mask)
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) not in (1, batch):
                raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {batch}; give one "
                                 "negative prompt or one per prompt")
            negative_prompt_embeds, negative_attention_mask = self._t5(negatives, device)
            length = prompt_embeds.shape[1]
            negative_prompt_embeds = negative_prompt_embeds[:, :length]
            negative_attention_mask = negative_attention_mask[:, :length]
            negative_prompt_embeds = negative_prompt_embeds * negative_attention_mask.unsqueeze(2)
        negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
        negative_attention_mask = negative_attention_mask.to(device)
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            rows = prompt_embeds.shape[0] // negative_prompt_embeds.shape[0]
            negative_prompt_embeds = _rows(negative_prompt_embeds, rows)
            negative_attention_mask = _rows(negative_attention_mask, rows)
        return prompt_embeds, negative_prompt_embeds, attention_mask, negative_attention_mask

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        extra = dict(getattr(call, "kwargs", None) or {})
        call.callback = extra.pop("callback", None)
        call.callback_steps = extra.pop("callback_steps", None) or 1
        if extra:
            raise TypeError(f"{type(self).__name__}.__call__ got unexpected keyword arguments {sorted(extra)}")
        if call.prompt is not None and call.prompt_embeds is not None:
            raise ValueError("pass either prompt or prompt_embeds, not both")
        if call.prompt is None and call.prompt_embeds is None:
            raise ValueError("prompt or prompt_embeds is required")
        if call.prompt is not None and not (isinstance(call.prompt, str) or (
                isinstance(call.prompt, list) and call.prompt and all(isinstance(p, str) for p in call.prompt))):
            raise TypeError(f"prompt must be a str or a non-empty list of str, got {type(call.prompt).__name__}")
        if call.negative_prompt is not None and call.negative_prompt_embeds is not None:
            raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
        for embeds, mask, name in ((call.prompt_embeds, call.attention_mask, "prompt_embeds"),
                                   (call.negative_prompt_embeds, call.negative_attention_mask, "negative_prompt_embeds")):
            if embeds is None:
                continue
            if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
                raise ValueError(f"{name} must be a 3-D tensor (batch, tokens, width)")
            mask_name = "attention_mask" if name == "prompt_embeds" else "negative_attention_mask"
            if mask is None:
                raise ValueError(f"{mask_name} is required with {name} (1 for real tokens, 0 for padding)")
            if tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(f"{mask_name} must have shape {tuple(embeds.shape[:2])} (batch, tokens of {name}), "
                                 f"got {tuple(mask.shape)}")
        if (call.prompt_embeds is not None and call.negative_prompt_embeds is not None
                and call.prompt_embeds.shape != call.negative_prompt_embeds.shape):
            raise ValueError(f"negative_prompt_embeds {tuple(call.negative_prompt_embeds.shape)} must have the shape "
                             f"of prompt_embeds {tuple(call.prompt_embeds.shape)}")
        for name in ("height", "width"):
            if not hasattr(call, name):  # image-to-image takes the image's size
                continue
            value = getattr(call, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def _default_guider(self, call: SimpleNamespace):
        if call.guidance_scale is None or call.guidance_scale <= 1:
            return NoGuidance()
        from kernel.registry import get_registry

        return get_registry().resolve("ClassifierFreeGuidance")(guidance_scale=call.guidance_scale + 1.0)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        embeds, neg, mask, neg_mask = self.encode_prompt(
            call.prompt, negative, call.num_images_per_prompt, call.device, call.negative_prompt, call.prompt_embeds,
            call.negative_prompt_embeds, True, call.attention_mask, call.negative_attention_mask)
        return Conditioning({"prompt_embeds": embeds, "attention_mask": mask},
                            {"prompt_embeds": neg, "attention_mask": neg_mask} if negative else None)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        f = _LATENT_FACTOR
        return (call.batch, self.unet.config.in_channels, math.ceil(call.height / f ** 2) * f,
                math.ceil(call.width / f ** 2) * f)

    _scale_model_input = unscaled_model_input

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.unet(model_input, timestep, encoder_hidden_states=cond["prompt_embeds"],
                         encoder_attention_mask=cond["attention_mask"], return_dict=False, **kwargs)[0]

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        return self.movq.decode(latents.to(self.movq.dtype), force_not_quantize=True, return_dict=False)[0]

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        if call.output_type == "pt" and self._raw_pt_output:
            return self._vae_decode(latents, call)
        return super()._decode(latents, call)

    def _output(self, images: Any, call: SimpleNamespace):
        return ImagePipelineOutput(images=images) if call.return_dict else (images,)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        height: int | None = 1024,
        width: int | None = 1024,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        **kwargs: Any,
    ):
        return self._generate(locals())


class Kandinsky3Img2ImgPipeline(Kandinsky3Pipeline):
    """Image-to-image (SDEdit): the image's MoVQ latents (unscaled) noised to ``strength``, then denoised as above.

    The image keeps its own size (rounded down to the MoVQ factor); one image serves every prompt, or give
    one per prompt.
    """

    _task = "image2image"
    _raw_pt_output = False

    def _prepare(self, call: SimpleNamespace) -> None:
        super()._prepare(call)
        images = call.image if isinstance(call.image, list) else [call.image]
        if not images or not all(isinstance(i, (PIL.Image.Image, torch.Tensor)) for i in images):
            raise TypeError(f"image must be a PIL image, a tensor or a list of them, got "
                            f"{[type(i).__name__ for i in images] or 'an empty list'}")

    def _preprocess_image(self, call: SimpleNamespace, **kwargs: Any) -> torch.Tensor:
        images = call.image if isinstance(call.image, list) else [call.image]
        return torch.cat([self.image_processor.preprocess(i) for i in images])

    def _image_latents(self, call: SimpleNamespace, pixels: torch.Tensor, *, per_generator: bool) -> torch.Tensor:
        x = pixels.to(device=call.device, dtype=call.dtype)
        if x.shape[1] != self.movq.config.latent_channels:
            x = self.movq.encode(x.to(self.movq.dtype)).latents.to(call.dtype)
        x = x.repeat_interleave(call.num_images_per_prompt, dim=0)
        if x.shape[0] not in (call.num_images_per_prompt, call.batch):
            raise ValueError(f"got {x.shape[0] // call.num_images_per_prompt} images for "
                             f"{call.batch // call.num_images_per_prompt} prompts; pass one image or one per prompt")
        return x.repeat(call.batch // x.shape[0], 1, 1, 1).contiguous()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: torch.Tensor | PIL.Image.Image | list | None = None,
        strength: float = 0.3,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        **kwargs: Any,
    ):
        return self._generate(locals())
