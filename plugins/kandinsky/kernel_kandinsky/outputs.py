"""Pipeline outputs (attribute, dict and tuple access, like Diffusers')."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernel.outputs import BaseOutput


@dataclass
class KandinskyPriorPipelineOutput(BaseOutput):
    """``image_embeds`` / ``negative_image_embeds``: CLIP image embeddings ``(B, clip_embed_dim)`` (tensor or array)."""

    image_embeds: Any = None
    negative_image_embeds: Any = None


@dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: PIL images, an ``(B, H, W, C)`` array or a tensor."""

    images: Any = None
