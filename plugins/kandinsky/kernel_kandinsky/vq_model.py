"""The vector-quantised image autoencoder of Kandinsky 2.2 (MoVQ: Zheng et al., arXiv:2209.09002).

``encode(x).latents`` are the encoder's continuous latents ``(B, vq_embed_dim, H/f, W/f)``
(``f = 2 ** (len(block_out_channels) - 1)``); ``decode(h)`` snaps them to the nearest codebook
vectors (VQ-VAE, van den Oord et al., arXiv:1711.00937) unless ``force_not_quantize=True``, which is
what the Kandinsky pipelines do with denoised latents.  With ``norm_type="spatial"`` every decoder norm
is modulated per pixel by the quantised latent (MoVQ's spatially conditioned normalisation).

Encoder and decoder are the latent-diffusion autoencoder's (:mod:`kernel_autoencoders`); MoVQ also
uses stages with self-attention (``AttnDownEncoderBlock2D`` / ``AttnUpDecoderBlock2D``), defined here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_autoencoders import Decoder, DecoderOutput, Encoder
from kernel_autoencoders.latents import LatentSpaceMixin
from kernel_layers.attention import AttentionMixin
from kernel_layers.blocks_2d import DownEncoderBlock2D, UpDecoderBlock2D, spatial_self_attention

DOWN_TYPES = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
UP_TYPES = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")


@dataclass
class VQEncoderOutput(BaseOutput):
    """``latents``: the encoder's (unquantised) latents ``(B, C, h, w)``."""

    latents: torch.Tensor = None


class AttnDownEncoderBlock2D(DownEncoderBlock2D):
    """Encoder stage with a single-head self-attention after every ResNet."""

    def __init__(self, in_channels: int, out_channels: int, *, attention_head_dim: int | None = None, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        groups, eps = kwargs.get("resnet_groups", 32), kwargs.get("resnet_eps", 1e-6)
        self.attentions = nn.ModuleList([
            spatial_self_attention(out_channels, attention_head_dim or out_channels, groups, eps,
                                   kwargs.get("output_scale_factor", 1.0))
            for _ in self.resnets
        ])

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            hidden_states = attn(resnet(hidden_states, None))
        for down in self.downsamplers or ():
            hidden_states = down(hidden_states)
        return hidden_states


class AttnUpDecoderBlock2D(UpDecoderBlock2D):
    """Decoder stage with a self-attention after every ResNet (spatially normed under MoVQ)."""

    def __init__(self, in_channels: int, out_channels: int, *, attention_head_dim: int | None = None, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        spatial = kwargs.get("resnet_time_scale_shift") == "spatial"
        temb_channels = kwargs.get("temb_channels")
        self.attentions = nn.ModuleList([
            spatial_self_attention(out_channels, attention_head_dim or out_channels,
                                   None if spatial else kwargs.get("resnet_groups", 32), kwargs.get("resnet_eps", 1e-6),
                                   kwargs.get("output_scale_factor", 1.0),
                                   spatial_norm_dim=temb_channels if spatial else None)
            for _ in self.resnets
        ])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            hidden_states = attn(resnet(hidden_states, temb), temb=temb)
        for up in self.upsamplers or ():
            hidden_states = up(hidden_states)
        return hidden_states


def _check(types, allowed: tuple[str, ...], name: str) -> None:
    for t in types:
        if t not in allowed:
            raise ValueError(f"{name} entry {t!r} is not supported by VQModel; use one of {list(allowed)}")


def _swap_stages(blocks: nn.ModuleList, types, attn_name: str, attn_cls: type, make_kwargs) -> None:
    """Replace the plain stages the base encoder/decoder built with attention stages where ``types`` asks.

    ``make_kwargs(i)`` gives the arguments the base class used for stage ``i``, so both agree on
    channels, groups and resampling.
    """
    for i, kind in enumerate(types):
        if kind == attn_name:
            blocks[i] = attn_cls(**make_kwargs(i))


class VQEncoder(Encoder):
    """The latent-diffusion encoder (``double_z=False``) with optional attention stages."""

    def __init__(self, *, down_block_types, block_out_channels, layers_per_block: int, norm_num_groups: int,
                 act_fn: str, **kwargs):
        _check(down_block_types, DOWN_TYPES, "down_block_types")
        super().__init__(down_block_types=("DownEncoderBlock2D",) * len(down_block_types),
                         block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                         norm_num_groups=norm_num_groups, act_fn=act_fn, double_z=False, **kwargs)
        last = len(block_out_channels) - 1
        _swap_stages(self.down_blocks, down_block_types, "AttnDownEncoderBlock2D", AttnDownEncoderBlock2D,
                             lambda i: dict(in_channels=block_out_channels[max(i - 1, 0)],
                                            out_channels=block_out_channels[i], num_layers=layers_per_block,
                                            resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                                            add_downsample=i < last, downsample_padding=0,
                                            attention_head_dim=block_out_channels[i]))


class VQDecoder(Decoder):
    """The latent-diffusion decoder (group or MoVQ spatial norm) with optional attention stages."""

    def __init__(self, *, in_channels: int, up_block_types, block_out_channels, layers_per_block: int,
                 norm_num_groups: int, act_fn: str, norm_type: str, **kwargs):
        _check(up_block_types, UP_TYPES, "up_block_types")
        super().__init__(in_channels=in_channels, up_block_types=("UpDecoderBlock2D",) * len(up_block_types),
                         block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                         norm_num_groups=norm_num_groups, act_fn=act_fn, norm_type=norm_type, **kwargs)
        rev = list(reversed(block_out_channels))
        _swap_stages(self.up_blocks, up_block_types, "AttnUpDecoderBlock2D", AttnUpDecoderBlock2D,
                             lambda i: dict(in_channels=rev[max(i - 1, 0)], out_channels=rev[i],
                                            num_layers=layers_per_block + 1, resolution_idx=i,
                                            add_upsample=i < len(rev) - 1, resnet_eps=1e-6, resnet_act_fn=act_fn,
                                            resnet_groups=norm_num_groups,
                                            temb_channels=in_channels if norm_type == "spatial" else None,
                                            resnet_time_scale_shift=norm_type, attention_head_dim=rev[i]))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-vector quantisation with a straight-through gradient (VQ-VAE).

    ``forward(z)`` returns ``(z_q, loss, (None, None, indices))``; the loss is the legacy form
    ``|sg(z_q) - z|^2 + beta |z_q - sg(z)|^2`` that the released checkpoints were trained with.
    """

    def __init__(self, n_e: int, vq_embed_dim: int, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.n_e, self.vq_embed_dim, self.beta, self.legacy = n_e, vq_embed_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, vq_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def forward(self, z: torch.Tensor):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.vq_embed_dim)
        indices = torch.argmin(torch.cdist(flat, self.embedding.weight), dim=1)
        z_q = self.embedding(indices).view(z.shape)
        commit, codebook = torch.mean((z_q.detach() - z) ** 2), torch.mean((z_q - z.detach()) ** 2)
        loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
        """Codebook vectors for ``indices``; with ``shape`` ``(B, h, w, C)`` returned as ``(B, C, h, w)``."""
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(LatentSpaceMixin, ModelMixin, AttentionMixin):
    """VQ autoencoder with Diffusers' config keys and state-dict layout (see the module docstring)."""

    component_kind = "autoencoder"
    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["quantize"]
    _no_split_modules = ["ResnetBlock2D", "ResnetBlockCondNorm2D"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 3,
        sample_size: int = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = False,
        force_upcast: bool = False,
    ):
        super().__init__()
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        if norm_type not in ("group", "spatial"):
            raise ValueError(f"norm_type={norm_type!r} is not supported; use 'group' or 'spatial'")
        self.encoder = VQEncoder(in_channels=in_channels, out_channels=latent_channels,
                                 down_block_types=down_block_types, block_out_channels=block_out_channels,
                                 layers_per_block=layers_per_block, act_fn=act_fn, norm_num_groups=norm_num_groups,
                                 mid_block_add_attention=mid_block_add_attention)
        vq_embed_dim = vq_embed_dim if vq_embed_dim is not None else latent_channels
        self.quant_conv = nn.Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim, beta=0.25)
        self.post_quant_conv = nn.Conv2d(vq_embed_dim, latent_channels, 1)
        self.decoder = VQDecoder(in_channels=latent_channels, out_channels=out_channels,
                                 up_block_types=up_block_types, block_out_channels=block_out_channels,
                                 layers_per_block=layers_per_block, act_fn=act_fn, norm_num_groups=norm_num_groups,
                                 norm_type=norm_type, mid_block_add_attention=mid_block_add_attention)
        self.spatial_compression_ratio = 2 ** (len(block_out_channels) - 1)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images ``(B, in_channels, H, W)`` in [-1, 1] -> latents ``(B, vq_embed_dim, H/f, W/f)``."""
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, channels, height, width), got shape {tuple(x.shape)}")
        h = self.quant_conv(self.encoder(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True,
               shape: tuple[int, ...] | None = None):
        """Latents -> images; quantised first unless ``force_not_quantize`` (with ``lookup_from_codebook``,
        ``h`` holds codebook indices and ``shape`` is ``(B, h, w, C)``)."""
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        else:
            quant = self.quantize.get_codebook_entry(h, shape) if self.config.lookup_from_codebook else h
            commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)
        if quant.ndim != 4:
            raise ValueError(f"decode takes latents of shape (batch, channels, height, width), got {tuple(quant.shape)}")
        decoded = self.decoder(self.post_quant_conv(quant), quant if self.config.norm_type == "spatial" else None)
        return DecoderOutput(sample=decoded, commit_loss=commit_loss) if return_dict else (decoded, commit_loss)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode, quantise and decode."""
        out = self.decode(self.encode(sample).latents)
        return out if return_dict else (out.sample, out.commit_loss)
