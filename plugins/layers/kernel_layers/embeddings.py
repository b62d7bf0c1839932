"""Timestep, class and conditioning embeddings.

The sinusoidal timestep embedding is the Transformer position encoding of Vaswani et al.
("Attention Is All You Need", arXiv:1706.03762) applied to the diffusion step, as in Ho et al.
("Denoising Diffusion Probabilistic Models", arXiv:2006.11239).  Gaussian Fourier features
follow Tancik et al. (arXiv:2006.10739) as used by score-based models (Song et al., arXiv:2011.13456).

Positional (2-D sin-cos) and rotary embedding helpers for transformer denoisers belong in this
module too; they are added by the families that need them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernel_layers.activations import get_activation


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    """Sinusoidal embedding of a 1-D tensor of (possibly fractional) steps: ``(N,) -> (N, embedding_dim)``.

    Frequencies are ``max_period ** (-i / (half - downscale_freq_shift))`` for ``i < half``;
    the output is ``[sin, cos]`` (``[cos, sin]`` with ``flip_sin_to_cos``), zero-padded when
    ``embedding_dim`` is odd.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor, got shape {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period))
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = scale * (timesteps[:, None].float() * freqs[None, :])
    first, second = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat([first, second], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Module form of :func:`get_timestep_embedding` (no parameters)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: int = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(
            timesteps, self.num_channels, flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift, scale=self.scale,
        )


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on a timestep projection: ``linear_1 -> act -> linear_2 [-> post_act]``.

    ``cond_proj_dim`` adds a bias-free projection of an extra condition (the guidance embedding
    of latent consistency models, Luo et al. arXiv:2310.04378) to the input first.
    """

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        out_dim: int | None = None,
        post_act_fn: str | None = None,
        cond_proj_dim: int | None = None,
        sample_proj_bias: bool = True,
    ):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, sample_proj_bias)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("a timestep condition was given but this embedding has no cond_proj (cond_proj_dim=None)")
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a noise level: ``[sin(2 pi x w), cos(2 pi x w)]`` (``log`` takes ``log x`` first)."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0, set_W_to_weight: bool = True,
                 log: bool = True, flip_sin_to_cos: bool = False):
        super().__init__()
        # The frozen frequencies are stored as ``weight`` whichever way the original was built.
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log:
            x = torch.log(x)
        angles = x[:, None] * self.weight[None, :] * 2 * math.pi
        if self.flip_sin_to_cos:
            return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class LabelEmbedding(nn.Module):
    """Class-label table with an extra "null" row for classifier-free guidance dropout (Ho & Salimans, arXiv:2207.12598)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = torch.as_tensor(force_drop_ids, device=labels.device) == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (self.training and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class CombinedTimestepLabelEmbeddings(nn.Module):
    """Timestep embedding plus class-label embedding (DiT, Peebles & Xie, arXiv:2212.09748)."""

    def __init__(self, num_classes: int, embedding_dim: int, class_dropout_prob: float = 0.1):
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)
        self.class_embedder = LabelEmbedding(num_classes, embedding_dim, class_dropout_prob)

    def forward(self, timestep: torch.Tensor, class_labels: torch.Tensor, hidden_dtype: torch.dtype | None = None):
        t = self.timestep_embedder(self.time_proj(timestep).to(dtype=hidden_dtype))
        return t + self.class_embedder(class_labels)


class TextImageProjection(nn.Module):
    """Image embedding -> ``num_image_text_embeds`` extra tokens prepended to the projected text tokens."""

    def __init__(self, text_embed_dim: int = 1024, image_embed_dim: int = 768, cross_attention_dim: int = 768,
                 num_image_text_embeds: int = 10):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.text_proj = nn.Linear(text_embed_dim, cross_attention_dim)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        image_tokens = self.image_embeds(image_embeds).reshape(text_embeds.shape[0], self.num_image_text_embeds, -1)
        return torch.cat([image_tokens, self.text_proj(text_embeds)], dim=1)


class ImageProjection(nn.Module):
    """Image embedding -> ``num_image_text_embeds`` layer-normed tokens."""

    def __init__(self, image_embed_dim: int = 768, cross_attention_dim: int = 768, num_image_text_embeds: int = 32):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        return self.norm(tokens.reshape(image_embeds.shape[0], self.num_image_text_embeds, -1))


class TextImageTimeEmbedding(nn.Module):
    """Projected text plus image embeddings added to the time embedding."""

    def __init__(self, text_embed_dim: int = 768, image_embed_dim: int = 768, time_embed_dim: int = 1536):
        super().__init__()
        self.text_proj = nn.Linear(text_embed_dim, time_embed_dim)
        self.text_norm = nn.LayerNorm(time_embed_dim)
        self.image_proj = nn.Linear(image_embed_dim, time_embed_dim)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.image_proj(image_embeds) + self.text_norm(self.text_proj(text_embeds))


class ImageTimeEmbedding(nn.Module):
    """Projected, layer-normed image embedding added to the time embedding."""

    def __init__(self, image_embed_dim: int = 768, time_embed_dim: int = 1536):
        super().__init__()
        self.image_proj = nn.Linear(image_embed_dim, time_embed_dim)
        self.image_norm = nn.LayerNorm(time_embed_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.image_norm(self.image_proj(image_embeds))


class ImageHintTimeEmbedding(ImageTimeEmbedding):
    """:class:`ImageTimeEmbedding` plus a small conv stack that turns a hint image into 4 latent channels."""

    def __init__(self, image_embed_dim: int = 768, time_embed_dim: int = 1536):
        super().__init__(image_embed_dim, time_embed_dim)
        widths = [(3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2)]
        layers: list[nn.Module] = []
        for cin, cout, stride in widths:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, stride=stride), nn.SiLU()]
        layers.append(nn.Conv2d(256, 4, 3, padding=1))
        self.input_hint_block = nn.Sequential(*layers)

    def forward(self, image_embeds: torch.Tensor, hint: torch.Tensor):
        return super().forward(image_embeds), self.input_hint_block(hint)
