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

import torch

from kernel.engine import Conditioning
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_size
from kernel_autoencoders.image_processor import VaeImageProcessor

from kernel_kandinsky.guidance import VarianceSplitGuidance, learns_variance
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
        factor = self.movq_scale_factor ** 2
        check_size(call.height, call.width, factor,
                   f"Kandinsky's latent grid: the MoVQ factor {self.movq_scale_factor}, squared")
        call.prompt, call.prompt_embeds = None, call.image_embeds  # the batch is the embeddings'

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

    def _added_cond(self, cond: dict, **kwargs) -> dict:
        return {"image_embeds": cond["image_embeds"]}

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
