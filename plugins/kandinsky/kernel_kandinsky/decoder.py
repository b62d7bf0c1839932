"""Kandinsky 2.2's decoder: CLIP image embedding -> image, with a UNet over MoVQ latents.

Every variant is Diffusers' signature over the kernel's one generation path
(:meth:`kernel.tasks.TaskMixin._generate`): the conditioning is the image embedding (negative: the
prior's negative embedding), the UNet projects it to both its cross-attention tokens
(``encoder_hid_dim_type="image_proj"``) and an addition to the time embedding
(``addition_embed_type="image"``, or ``"image_hint"`` with a ControlNet hint).  The UNet also predicts a
variance, which guidance leaves alone (:mod:`kernel_kandinsky.guidance`).  MoVQ latents are used as they
come (no scaling factor), and decoded without quantisation.

Sizes: the latent grid is ``height / f`` by ``width / f`` for the MoVQ factor ``f`` (8 for the released
model), and ``height`` and ``width`` must be multiples of ``f * f``: Diffusers rounds other sizes up to
the next multiple, which here is an error instead of a silently larger image.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import PIL.Image
import torch
import torch.nn.functional as F

from kernel.engine import Conditioning, ExtraChannels
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_size, repeat_to_batch
from kernel_autoencoders.image_processor import VaeImageProcessor

from kernel_kandinsky.guidance import VarianceSplitGuidance, learns_variance, unscaled_model_input
from kernel_kandinsky.masks import prepare_image_and_keep_mask, resize_pil, shrink_keep_mask
from kernel_kandinsky.outputs import ImagePipelineOutput


def _as_batch(value: Any, name: str) -> torch.Tensor | None:
    """``image_embeds``-like input: a 2-D tensor or a list of them (concatenated)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, torch.Tensor) for v in value):
            raise TypeError(f"{name} must be a torch.Tensor or a non-empty list of tensors")
        value = torch.cat(list(value), dim=0)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (batch, embedding width) or a list of them, "
                        f"got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, embedding width), got shape {tuple(value.shape)}")
    return value


class KandinskyV22DecoderBase(DiffusionPipeline):
    """Construction, checks, conditioning and the UNet evaluation every decoder variant shares."""

    pipeline_family = "kandinsky"
    model_cpu_offload_seq = "unet->movq"
    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds"]
    #: Diffusers' text-to-image, inpainting and ControlNet decoders return ``output_type="pt"`` in [-1, 1]
    #: (the decoder's output as is); image-to-image returns [0, 1].  Kept for identical numbers.
    _raw_pt_output = True

    def __init__(self, unet, scheduler, movq) -> None:
        self.register_modules(unet=unet, scheduler=scheduler, movq=movq)
        self.movq_scale_factor = 2 ** (len(movq.config.block_out_channels) - 1) if movq is not None else 8
        self.vae_scale_factor = self.movq_scale_factor
        channels = movq.config.latent_channels if movq is not None else 4
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.movq_scale_factor,
                                                 vae_latent_channels=channels, resample="bicubic", reducing_gap=1)

    @property
    def vae(self):
        """The kernel's tasks reach the autoencoder as ``vae``; Kandinsky calls it ``movq``."""
        return self.movq

    # ---------------------------------------------------------------- checks
    def _embedding_width(self) -> int | None:
        cfg = self.unet.config
        return cfg.encoder_hid_dim if cfg.encoder_hid_dim_type == "image_proj" else None

    def _prepare(self, call: SimpleNamespace) -> None:
        extra = dict(getattr(call, "kwargs", None) or {})
        call.callback = extra.pop("callback", getattr(call, "callback", None))
        call.callback_steps = extra.pop("callback_steps", getattr(call, "callback_steps", None)) or 1
        if extra:
            raise TypeError(f"{type(self).__name__}.__call__ got unexpected keyword arguments {sorted(extra)}")
        call.image_embeds = _as_batch(call.image_embeds, "image_embeds")
        call.negative_image_embeds = _as_batch(call.negative_image_embeds, "negative_image_embeds")
        if call.image_embeds is None:
            raise ValueError("image_embeds is required: the CLIP image embeddings from KandinskyV22PriorPipeline")
        width = self._embedding_width()
        for name in ("image_embeds", "negative_image_embeds"):
            value = getattr(call, name)
            if value is not None and width is not None and value.shape[1] != width:
                raise ValueError(f"{name} has width {value.shape[1]} but the UNet takes image embeddings of width "
                                 f"{width} (unet.config.encoder_hid_dim); use the prior that matches this decoder")
        negative = call.negative_image_embeds
        if negative is not None and negative.shape != call.image_embeds.shape:
            raise ValueError(f"negative_image_embeds {tuple(negative.shape)} must have the shape of image_embeds "
                             f"{tuple(call.image_embeds.shape)}")
        self._check_size(call)
        call.prompt, call.prompt_embeds = None, call.image_embeds  # the batch is the embeddings'

    def _check_size(self, call: SimpleNamespace) -> None:
        f = self.movq_scale_factor
        check_size(call.height, call.width, f * f, f"Kandinsky's latent grid: the MoVQ factor {f}, squared")

    # ---------------------------------------------------------------- engine hooks
    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        n, dtype = call.num_images_per_prompt, self.unet.dtype

        def rows(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(n, dim=0).to(device=call.device, dtype=dtype)

        if not negative:
            return Conditioning({"image_embeds": rows(call.image_embeds)})
        if call.negative_image_embeds is None:
            raise ValueError("negative_image_embeds is required while guidance is on (guidance_scale > 1): pass the "
                             "prior's negative_image_embeds, or set guidance_scale=1 to run without guidance")
        return Conditioning({"image_embeds": rows(call.image_embeds)},
                            {"image_embeds": rows(call.negative_image_embeds)})

    def _latent_channels(self) -> int:
        return self.unet.config.in_channels

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        f = self.movq_scale_factor
        return (call.batch, self._latent_channels(), call.height // f, call.width // f)

    def _added_cond(self, cond: dict) -> dict:
        return {"image_embeds": cond["image_embeds"]}

    _scale_model_input = unscaled_model_input

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.unet(model_input, timestep, encoder_hidden_states=None, added_cond_kwargs=self._added_cond(cond),
                         return_dict=False, **kwargs)[0]

    def denoise(self, latents, timesteps, num_inference_steps, conditioning, guider, **kwargs):
        """The engine's loop, with the guider limited to the noise half of the UNet's output."""
        split = VarianceSplitGuidance(guider, latents.shape[1], learns_variance(self.scheduler))
        return super().denoise(latents, timesteps, num_inference_steps, conditioning, split, **kwargs)

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        return self.movq.decode(latents.to(self.movq.dtype), force_not_quantize=True, return_dict=False)[0]

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        if call.output_type == "pt" and self._raw_pt_output:
            return self._vae_decode(latents, call)
        return super()._decode(latents, call)

    def _output(self, images: Any, call: SimpleNamespace):
        return ImagePipelineOutput(images=images) if call.return_dict else (images,)


class KandinskyV22Pipeline(KandinskyV22DecoderBase):
    """Text-to-image decoding of CLIP image embeddings (from :class:`KandinskyV22PriorPipeline`)."""

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        **kwargs: Any,
    ):
        return self._generate(locals())


class KandinskyV22Img2ImgPipeline(KandinskyV22DecoderBase):
    """Image-to-image: the image's MoVQ latents noised to ``strength`` (SDEdit), then decoded as above.

    ``height`` and ``width`` are the size the image is resized to (Diffusers 0.42 passes them to the
    resize swapped, which only matters for non-square sizes; here they mean what they say).
    """

    _task = "image2image"
    _raw_pt_output = False

    def _prepare(self, call: SimpleNamespace) -> None:
        super()._prepare(call)
        images = call.image if isinstance(call.image, list) else [call.image]
        if not images or not all(isinstance(i, (PIL.Image.Image, torch.Tensor)) for i in images):
            raise ValueError(f"image must be a PIL image, a tensor or a list of them, got "
                             f"{[type(i).__name__ for i in images] or 'an empty list'}")

    def _preprocess_image(self, call: SimpleNamespace, **kwargs: Any) -> torch.Tensor:
        images = call.image if isinstance(call.image, list) else [call.image]
        return torch.cat([self.image_processor.preprocess(i, height=call.height, width=call.width) for i in images])

    def _image_latents(self, call: SimpleNamespace, pixels: torch.Tensor, *, per_generator: bool) -> torch.Tensor:
        x = pixels.to(device=call.device, dtype=call.dtype)
        if x.shape[1] != self.movq.config.latent_channels:
            x = self.movq.encode(x.to(self.movq.dtype)).latents.to(call.dtype)  # MoVQ latents are used unscaled
        x = x.repeat_interleave(call.num_images_per_prompt, dim=0)
        if x.shape[0] not in (call.num_images_per_prompt, call.batch):
            raise ValueError(f"got {x.shape[0] // call.num_images_per_prompt} images for "
                             f"{call.batch // call.num_images_per_prompt} image_embeds; pass one image or one per "
                             "embedding")
        return x.repeat(call.batch // x.shape[0], 1, 1, 1).contiguous()

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        image: torch.Tensor | PIL.Image.Image | list,
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        **kwargs: Any,
    ):
        return self._generate(locals())


class KandinskyV22InpaintPipeline(KandinskyV22DecoderBase):
    """Inpainting with a 9-channel UNet: ``[latents, masked image latents, keep mask]`` in, and the known
    region (the image's latents, noised to the next step) pasted back after every step and at the end.

    White in ``mask_image`` is repainted.  The keep mask is shrunk by one latent cell around the
    repainted region (:func:`kernel_kandinsky.masks.shrink_keep_mask`).
    """

    _task = "inpainting"
    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds", "masked_image", "mask_image"]

    def _prepare(self, call: SimpleNamespace) -> None:
        super()._prepare(call)
        call.strength, call.padding_mask_crop, call.masked_image_latents = 1.0, None, None
        # PIL inputs are resized to height x width (so an image and a mask of different sizes are fine).
        call.image = resize_pil(call.image, call.height, call.width, PIL.Image.BICUBIC, reducing_gap=1)
        call.mask_image = resize_pil(call.mask_image, call.height, call.width, PIL.Image.LANCZOS)

    def _latent_channels(self) -> int:
        return self.movq.config.latent_channels

    def _inpainting(self, call: SimpleNamespace, cond: Conditioning, timesteps: torch.Tensor):
        pixels, keep = prepare_image_and_keep_mask(call.image, call.mask_image, call.height, call.width)
        image_latents = self.movq.encode(pixels.to(device=call.device, dtype=self.movq.dtype)).latents.to(call.dtype)
        keep = F.interpolate(keep.to(device=call.device, dtype=call.dtype), image_latents.shape[-2:], mode="nearest")
        keep = shrink_keep_mask(keep)
        n = call.num_images_per_prompt
        per_image = {"masked_image": image_latents * keep, "mask_image": keep}
        for name, value in per_image.items():
            cond.shared[name] = repeat_to_batch(value.repeat_interleave(n, dim=0), call.batch, "images")
        shape = self._latent_shape(call)
        if image_latents.shape[-2:] != shape[-2:]:
            raise ValueError(f"image and mask_image give a {tuple(image_latents.shape[-2:])} latent grid but height x "
                             f"width ask for {tuple(shape[-2:])}; pass tensors of size height x width")
        latents = self._noise(call, shape) if call.latents is None else self._given_latents(call, shape)
        latents = latents * self.scheduler.init_noise_sigma
        noise, scheduler = latents.clone(), self.scheduler
        call.image_latents, call.cond = image_latents, cond

        def paste_known(i: int, current: torch.Tensor) -> torch.Tensor:
            keep_first, known = cond.shared["mask_image"][:1], image_latents[:1]
            if i < len(timesteps) - 1:
                known = scheduler.add_noise(known, noise, timesteps[i + 1:i + 2])
            return keep_first * known + (1 - keep_first) * current

        return latents, paste_known, (ExtraChannels("masked_image", "mask_image"),)

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        keep = call.cond.shared["mask_image"][:1]
        latents = keep * call.image_latents[:1] + (1 - keep) * latents
        return super()._decode(latents, call)

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        image: torch.Tensor | PIL.Image.Image,
        mask_image: torch.Tensor | PIL.Image.Image | Any,
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        **kwargs: Any,
    ):
        return self._generate(locals())


class KandinskyV22ControlnetPipeline(KandinskyV22DecoderBase):
    """Text-to-image decoding steered by a ``hint`` image (e.g. a depth map) that the UNet encodes itself
    (``addition_embed_type="image_hint"``: the hint's features are concatenated to the latents)."""

    #: The UNet's hint encoder downsamples by 8 (three stride-2 convolutions).
    HINT_FACTOR = 8

    def _prepare(self, call: SimpleNamespace) -> None:
        super()._prepare(call)
        if call.output_type == "latent":
            raise ValueError(f"output_type='latent' is not supported by {type(self).__name__}; use 'pil', 'np' or "
                             "'pt'")
        hint = _as_hint(call.hint)
        f = self.movq_scale_factor
        wanted = (call.height // f * self.HINT_FACTOR, call.width // f * self.HINT_FACTOR)
        if tuple(hint.shape[-2:]) != wanted:
            raise ValueError(f"hint is {hint.shape[-2]}x{hint.shape[-1]} but this decoder takes a hint of "
                             f"{wanted[0]}x{wanted[1]} for height={call.height}, width={call.width}")
        if hint.shape[0] != call.image_embeds.shape[0]:
            raise ValueError(f"hint has {hint.shape[0]} images for {call.image_embeds.shape[0]} image_embeds; "
                             "give one hint per embedding")
        call.hint = hint

    def _latent_channels(self) -> int:
        return self.movq.config.latent_channels

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        cond = super()._encode(call, negative)
        # The hint is the same for both passes; riding the conditioning batches it like Diffusers' [hint; hint].
        hint = call.hint.repeat_interleave(call.num_images_per_prompt, dim=0).to(device=call.device,
                                                                                  dtype=self.unet.dtype)
        for side in (cond.positive, cond.negative):
            if side is not None:
                side["hint"] = hint
        return cond

    def _added_cond(self, cond: dict) -> dict:
        return {"image_embeds": cond["image_embeds"], "hint": cond["hint"]}

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        hint: torch.Tensor | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        return self._generate(locals())


class KandinskyV22ControlnetImg2ImgPipeline(KandinskyV22ControlnetPipeline, KandinskyV22Img2ImgPipeline):
    """Image-to-image steered by a ``hint``: the hint conditioning of :class:`KandinskyV22ControlnetPipeline` on
    the image-to-image task of :class:`KandinskyV22Img2ImgPipeline` (the image's MoVQ latents noised to
    ``strength``); ``output_type="pt"`` is in [0, 1] as for image-to-image."""

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        image: torch.Tensor | PIL.Image.Image | list,
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        hint: torch.Tensor | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "pil",
        callback: Callable | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        return self._generate(locals())


def _as_hint(hint: Any) -> torch.Tensor:
    if isinstance(hint, (list, tuple)) and hint and all(isinstance(h, torch.Tensor) for h in hint):
        hint = torch.cat(list(hint), dim=0)
    if not isinstance(hint, torch.Tensor):
        raise TypeError(f"hint must be a torch.Tensor (B, 3, H, W) or a list of them, got {type(hint).__name__}")
    if hint.ndim != 4:
        raise ValueError(f"hint must be 4-D (batch, channels, height, width), got shape {tuple(hint.shape)}")
    if hint.shape[1] != 3:
        raise ValueError(f"hint must have 3 channels (the UNet's hint encoder takes RGB; repeat a one-channel depth "
                         f"map over 3), got {hint.shape[1]}")
    return hint
