"""Kandinsky 2.2's prior started from an image embedding ("emb2emb"): the prior pipeline on the kernel's
image-to-image task.

The starting "latents" are CLIP image embeddings - given as ``(B, D)`` tensors, or encoded from images by
the prior's image encoder - noised to the first kept step of the schedule (``strength``, SDEdit) and then
denoised towards the prompt with the same hooks as :class:`KandinskyV22PriorPipeline` (classifier-free
guidance, the unCLIP scheduler told each jump, de-normalisation at the end).  Nothing here runs a loop:
the task's strength trimming and noising come from :mod:`kernel.tasks`; this class only says what the
"image" is (its embedding) and how one embedding is spread over the prompts.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import PIL.Image
import torch

from kernel_kandinsky.outputs import KandinskyPriorPipelineOutput
from kernel_kandinsky.prior import KandinskyV22PriorPipeline


class KandinskyV22PriorEmb2EmbPipeline(KandinskyV22PriorPipeline):
    """Prompt + image (or image embedding) -> CLIP image embeddings for the Kandinsky 2.2 decoder."""

    _task = "image2image"
    _callback_tensor_inputs = ["latents"]

    # ---------------------------------------------------------------- the "image": an embedding
    def _image_input(self, image: Any) -> torch.Tensor | list[PIL.Image.Image]:
        """``image`` as a tensor ``(B, D)`` of embeddings or ``(B, 3, S, S)`` of pixels, or a list of PIL images."""
        items = image if isinstance(image, list) else [image]
        if not items:
            raise ValueError("image must not be an empty list")
        if all(isinstance(i, PIL.Image.Image) for i in items):
            return items
        if not all(isinstance(i, torch.Tensor) for i in items):
            raise ValueError(f"image must be a PIL image, a torch.Tensor (image embeddings (B, D) or pixels "
                             f"(B, 3, H, W)) or a list of one kind of them, got {[type(i).__name__ for i in items]}")
        x = torch.cat(items, dim=0) if len(items) > 1 else items[0]
        width = self.prior.config.embedding_dim
        if x.ndim == 2:
            if x.shape[1] != width:
                raise ValueError(f"image embeddings have width {x.shape[1]} but this prior takes width {width} "
                                 "(prior.config.embedding_dim); pass embeddings from the matching image encoder")
            return x
        if x.ndim != 4:
            raise ValueError(f"image tensors must be image embeddings (batch, {width}) or pixels (batch, 3, height, "
                             f"width), got shape {tuple(x.shape)}")
        cfg = self.image_encoder.config
        wanted = (cfg.num_channels, cfg.image_size, cfg.image_size)
        if tuple(x.shape[1:]) != wanted:
            raise ValueError(f"image pixels have shape {tuple(x.shape[1:])} but the image encoder takes {wanted} "
                             "(preprocess them with the pipeline's image_processor, or pass PIL images)")
        return x

    def _prepare(self, call: SimpleNamespace) -> None:
        super()._prepare(call)
        call.image = self._image_input(call.image)
        call.latents = None

    def _preprocess_image(self, call: SimpleNamespace, **kwargs: Any) -> torch.Tensor:
        """The starting embeddings ``(images x num_images_per_prompt, D)``: given, or encoded from pixels."""
        image = call.image
        if isinstance(image, list):
            image = self.image_processor(image, return_tensors="pt").pixel_values
        if image.ndim == 4:
            image = self.encode_images(image, call.device)
        return image.repeat_interleave(call.num_images_per_prompt, dim=0)

    def _image_latents(self, call: SimpleNamespace, pixels: torch.Tensor, *, per_generator: bool) -> torch.Tensor:
        rows = pixels.shape[0]
        if call.batch % rows:
            n = call.num_images_per_prompt
            raise ValueError(f"got {rows // n} images (or image embeddings) for {call.batch // n} prompts (doubled "
                             "with a negative_prompt); pass one image, or a number that divides the prompts")
        # The images repeat as a whole over the prompts (and the negative prompts' half), as in Diffusers.
        return pixels.to(device=call.device, dtype=call.dtype).repeat(call.batch // rows, 1)

    def _text_prior(self) -> KandinskyV22PriorPipeline:
        return KandinskyV22PriorPipeline.from_pipe(self)

    # ---------------------------------------------------------------- calls
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: torch.Tensor | list[torch.Tensor] | PIL.Image.Image | list[PIL.Image.Image],
        strength: float = 0.3,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_scale: float = 4.0,
        output_type: str | None = "pt",
        return_dict: bool = True,
    ) -> KandinskyPriorPipelineOutput | tuple:
        return self._generate(locals())
