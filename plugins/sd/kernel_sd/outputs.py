"""Pipeline outputs (attribute, dict and tuple access, like Diffusers')."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernel.outputs import BaseOutput


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """``images``: PIL images, an ``[B, H, W, C]`` array or a tensor; ``nsfw_content_detected``: one
    flag per image, or ``None`` (kernel-sd runs no safety checker, so it is always ``None``)."""

    images: Any
    nsfw_content_detected: list[bool] | None = None


@dataclass
class StableDiffusionXLPipelineOutput(BaseOutput):
    images: Any


@dataclass
class ImagePipelineOutput(BaseOutput):
    images: Any
