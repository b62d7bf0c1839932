"""``StableAudioProjectionModel``: maps T5 text states and the clip's start / total seconds into the DiT's
conditioning width (Diffusers' config keys and state-dict layout).

A number ``s`` is clamped to ``[min_value, max_value]``, scaled to ``[0, 1]`` and embedded as
``[u, sin(2 pi u w), cos(2 pi u w)]`` with learned frequencies ``w`` (the continuous-time Fourier
features of stable-audio-tools), then projected linearly to one ``(1, conditioning_dim)`` token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput


class StableAudioPositionalEmbedding(nn.Module):
    """``(B,)`` values in [0, 1] -> ``(B, dim + 1)``: the value, then sines and cosines of learned frequencies."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the number embedding needs an even width, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        times = times[..., None]
        angles = times * self.weights[None] * 2 * math.pi
        return torch.cat((times, angles.sin(), angles.cos()), dim=-1)


class StableAudioNumberConditioner(nn.Module):
    """Seconds ``(B,)`` -> ``(B, 1, number_embedding_dim)``."""

    def __init__(self, number_embedding_dim: int, min_value: float, max_value: float, internal_dim: int = 256):
        super().__init__()
        self.time_positional_embedding = nn.Sequential(StableAudioPositionalEmbedding(internal_dim),
                                                       nn.Linear(internal_dim + 1, number_embedding_dim))
        self.number_embedding_dim = number_embedding_dim
        self.min_value = min_value
        self.max_value = max_value

    def forward(self, floats: torch.Tensor) -> torch.Tensor:
        floats = floats.clamp(self.min_value, self.max_value)
        unit = (floats - self.min_value) / (self.max_value - self.min_value)
        unit = unit.to(next(self.time_positional_embedding.parameters()).dtype)
        return self.time_positional_embedding(unit).view(-1, 1, self.number_embedding_dim)


@dataclass
class StableAudioProjectionModelOutput(BaseOutput):
    """``text_hidden_states`` ``(B, L, conditioning_dim)``; ``seconds_start_hidden_states`` and
    ``seconds_end_hidden_states`` ``(B, 1, conditioning_dim)``; each None when its input was."""

    text_hidden_states: torch.Tensor | None = None
    seconds_start_hidden_states: torch.Tensor | None = None
    seconds_end_hidden_states: torch.Tensor | None = None


class StableAudioProjectionModel(ModelMixin):
    """Text projection (identity when the widths agree) and the start / end seconds conditioners."""

    @register_to_config
    def __init__(self, text_encoder_dim: int, conditioning_dim: int, min_value: float, max_value: float):
        super().__init__()
        if not max_value > min_value:
            raise ValueError(f"max_value ({max_value}) must be greater than min_value ({min_value})")
        self.text_projection = (nn.Identity() if conditioning_dim == text_encoder_dim
                                else nn.Linear(text_encoder_dim, conditioning_dim))
        self.start_number_conditioner = StableAudioNumberConditioner(conditioning_dim, min_value, max_value)
        self.end_number_conditioner = StableAudioNumberConditioner(conditioning_dim, min_value, max_value)

    def forward(self, text_hidden_states: torch.Tensor | None = None, start_seconds: torch.Tensor | None = None,
                end_seconds: torch.Tensor | None = None) -> StableAudioProjectionModelOutput:
        def maybe(fn, x):
            return None if x is None else fn(x)

        return StableAudioProjectionModelOutput(
            text_hidden_states=maybe(self.text_projection, text_hidden_states),
            seconds_start_hidden_states=maybe(self.start_number_conditioner, start_seconds),
            seconds_end_hidden_states=maybe(self.end_number_conditioner, end_seconds))
