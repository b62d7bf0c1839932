"""Kandinsky 2.1: the 2.2 prior under 2.1's name, and a decoder that also reads the prompt.

2.1's decoder UNet is conditioned on the prompt as well as on the CLIP image embedding: the
:class:`~kernel_kandinsky.multilingual_clip.MultilingualCLIP` token states are its cross-attention input
(projected together with the image embedding, ``encoder_hid_dim_type="text_image_proj"``) and its pooled
projection joins the image embedding in the time embedding (``addition_embed_type="text_image"``).  The
negative pass uses the negative prompt (``""`` by default) with ``negative_image_embeds``.

Everything else - the one denoising loop, the learned-variance split under guidance, MoVQ decoding, sizes -
is the 2.2 decoder's (:class:`~kernel_kandinsky.decoder.KandinskyV22DecoderBase`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import PIL.Image
import torch

from kernel.engine import Conditioning
from kernel.pipeline_utils import tokenize

from kernel_kandinsky.decoder import KandinskyV22DecoderBase, KandinskyV22Img2ImgPipeline, KandinskyV22InpaintPipeline
from kernel_kandinsky.outputs import KandinskyPriorPipelineOutput
from kernel_kandinsky.prior import KandinskyV22PriorPipeline, _prompt_list


#: 2.1's decoder tokenises every prompt to this many tokens (whatever the tokenizer's own limit).
TEXT_TOKENS = 77
DECODER_OUTPUT_TYPES = ("pil", "np", "pt")


class _DiffusersIndexNames:
    """Writes Diffusers' ``["kandinsky", "MultilingualCLIP"]`` for the text encoder in ``model_index.json``
    (Diffusers finds that class in its ``kandinsky`` pipeline package, not at its top level)."""

    def _index_text_encoder(self) -> None:
        from kernel_kandinsky.multilingual_clip import MultilingualCLIP

        for name in self._component_names():
            if isinstance(getattr(self, name, None), MultilingualCLIP):
                self.register_to_config(**{name: ["kandinsky", "MultilingualCLIP"]})

    def register_modules(self, **modules: Any) -> None:
        super().register_modules(**modules)
        self._index_text_encoder()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dict__.get("_component_keys", ()):
            self._index_text_encoder()


class KandinskyPriorPipeline(KandinskyV22PriorPipeline):
    """Text (and image) -> CLIP image embeddings for the Kandinsky 2.1 decoder (the 2.2 prior, 2.1's call)."""

    _callback_tensor_inputs = ["latents"]

    @torch.no_grad()
    def interpolate(self, images_and_prompts: list, weights: list[float], num_images_per_prompt: int = 1,
                    num_inference_steps: int = 25, generator=None, latents: torch.Tensor | None = None,
                    negative_prior_prompt: str | None = None, negative_prompt: str = "", guidance_scale: float = 4.0,
                    device=None) -> KandinskyPriorPipelineOutput:
        """A weighted sum of the image embeddings of prompts and images, as one ``(1, D)`` embedding."""
        if num_images_per_prompt != 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt}: KandinskyPriorPipeline.interpolate "
                             "supports 1 only (2.1 sums the rows of every prompt into one embedding)")
        return super().interpolate(images_and_prompts, weights, num_images_per_prompt=1,
                                   num_inference_steps=num_inference_steps, generator=generator, latents=latents,
                                   negative_prior_prompt=negative_prior_prompt, negative_prompt=negative_prompt,
                                   guidance_scale=guidance_scale, device=device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_scale: float = 4.0,
        output_type: str | None = "pt",
        return_dict: bool = True,
    ):
        return self._generate(locals())


class KandinskyPipeline(_DiffusersIndexNames, KandinskyV22DecoderBase):
    """Text-to-image decoding of CLIP image embeddings (from :class:`KandinskyPriorPipeline`) and the prompt."""

    pipeline_family = "kandinsky-2-1"  # the text+image decoder: 2.2's image-only UNet does not fit it
    model_cpu_offload_seq = "text_encoder->unet->movq"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, text_encoder, tokenizer, unet, scheduler, movq) -> None:
        super().__init__(unet=unet, scheduler=scheduler, movq=movq)
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)

    def _embedding_width(self) -> int | None:
        cfg = self.unet.config
        return cfg.cross_attention_dim if cfg.encoder_hid_dim_type == "text_image_proj" else None

    def _prepare(self, call: SimpleNamespace) -> None:
        prompts = _prompt_list(call.prompt, "prompt")
        negatives = _prompt_list(call.negative_prompt, "negative_prompt", optional=True)
        if call.output_type not in DECODER_OUTPUT_TYPES:
            raise ValueError(f"output_type={call.output_type!r} is not supported by {type(self).__name__}; use one of "
                             f"{list(DECODER_OUTPUT_TYPES)}")
        super()._prepare(call)
        rows = call.image_embeds.shape[0]
        if len(prompts) != rows:
            raise ValueError(f"prompt has {len(prompts)} entries but image_embeds has {rows} rows; give one image "
                             "embedding per prompt")
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; "
                             "give one negative prompt per prompt")
        call.texts, call.negative_texts = prompts, negatives

    def encode_prompt(self, prompt: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(prompt_embeds, text_encoder_hidden_states, text_mask)`` of ``prompt`` (77 tokens each)."""
        prompt = _prompt_list(prompt, "prompt")
        inputs = tokenize(self.tokenizer, prompt, TEXT_TOKENS)
        mask = inputs.attention_mask.to(device)
        embeds, hidden = self.text_encoder(input_ids=inputs.input_ids.to(device), attention_mask=mask)
        return embeds, hidden, mask

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        cond = super()._encode(call, negative)
        n, dtype = call.num_images_per_prompt, self.unet.dtype

        def add_text(side: dict, texts: list[str]) -> None:
            embeds, hidden, _ = self.encode_prompt(texts, call.device)
            side["text_embeds"] = embeds.repeat_interleave(n, dim=0).to(dtype)
            side["encoder_hidden_states"] = hidden.repeat_interleave(n, dim=0).to(dtype)

        add_text(cond.positive, call.texts)
        if cond.negative is not None:
            add_text(cond.negative, call.negative_texts or [""] * len(call.texts))
        return cond

    def _added_cond(self, cond: dict) -> dict:
        return {"text_embeds": cond["text_embeds"], "image_embeds": cond["image_embeds"]}

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.unet(model_input, timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                         added_cond_kwargs=self._added_cond(cond), return_dict=False, **kwargs)[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        return self._generate(locals())


#: The noise schedule 2.1's image-to-image noises the image latents with, whatever the scheduler: linear betas
#: from 1e-4 to 0.02 over 1000 steps.
_IMG2IMG_BETAS = (0.0001, 0.02, 1000)


def _noise_to(latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
    """``latents`` noised to ``timestep`` of :data:`_IMG2IMG_BETAS`'s schedule (the forward process)."""
    start, end, count = _IMG2IMG_BETAS
    alpha_bar = torch.cumprod(1.0 - torch.linspace(start, end, count, dtype=torch.float32), dim=0)[timestep]
    alpha_bar = alpha_bar.to(device=latents.device, dtype=latents.dtype)
    return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise


class KandinskyImg2ImgPipeline(KandinskyPipeline, KandinskyV22Img2ImgPipeline):
    """Image-to-image with the 2.1 decoder: the image's MoVQ latents are noised, then denoised from ``strength``.

    As in Diffusers, the start latents are noised to timestep ``int(num_train_timesteps * strength) - 2`` of a
    fixed linear schedule (:data:`_IMG2IMG_BETAS`), not of the scheduler's, and ``output_type="pt"`` is in
    [0, 1].  ``height`` and ``width`` are the size the image is resized to.
    """

    def _image2image(self, call: SimpleNamespace, cond: Conditioning, timesteps: torch.Tensor):
        timestep = int(self.scheduler.config.num_train_timesteps * call.strength) - 2
        if timestep < 0:
            raise ValueError(f"strength={call.strength} is too small: it must reach at least 2 training timesteps "
                             f"(strength >= {2 / self.scheduler.config.num_train_timesteps})")
        pixels = self._preprocess_image(call)
        init = self._image_latents(call, pixels, per_generator=False) * self.scheduler.init_noise_sigma
        return _noise_to(init, self._noise(call, init.shape), timestep), None, ()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: torch.Tensor | PIL.Image.Image | list,
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        strength: float = 0.3,
        guidance_scale: float = 7.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        return self._generate(locals())


class KandinskyInpaintPipeline(KandinskyPipeline, KandinskyV22InpaintPipeline):
    """Inpainting with the 2.1 decoder: a 9-channel UNet reads ``[latents, masked image latents, keep mask]``.

    The image and mask are prepared as in 2.2 (white in ``mask_image`` is repainted), but, as in Diffusers'
    2.1, the known region is not pasted back between steps nor at the end: the UNet alone keeps it.
    """

    def _inpainting(self, call: SimpleNamespace, cond: Conditioning, timesteps: torch.Tensor):
        latents, _paste_known, extras = super()._inpainting(call, cond, timesteps)
        return latents, None, extras

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        return KandinskyV22DecoderBase._decode(self, latents, call)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: torch.Tensor | PIL.Image.Image,
        mask_image: torch.Tensor | PIL.Image.Image | Any,
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        return self._generate(locals())
