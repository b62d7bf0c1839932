"""Model layers shared by several families (the ``kernel-layers`` distribution).

Modules: ``attention`` (Attention layer, processors, backend dispatch in ``attention_dispatch``),
``conv``, ``embeddings``, ``normalization`` (incl. the DiT adaLN pieces), ``activations``
(incl. FeedForward), ``resnet``, ``sampling``, ``transformer_2d``, ``blocks_2d`` (VAE/UNet
mid-block and encoder/decoder stages), ``dit_embeddings`` (patches, sin-cos tables, MMDiT
conditioning) and ``joint_attention`` (what the MMDiT processors share).  A layer only one
family uses lives in that family's plugin.  Module attribute names are Diffusers' state-dict keys.
"""

from kernel_layers.activations import FeedForward, GEGLU, GELU, ApproximateGELU, SwiGLU, get_activation
from kernel_layers.attention import (
    BACKENDS,
    Attention,
    AttentionMixin,
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
    attention_backend,
    dispatch_attention,
    get_attention_backend,
    set_attention_backend,
)
from kernel_layers.conv import Conv2d
from kernel_layers.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps, get_timestep_embedding
from kernel_layers.normalization import AdaGroupNorm, AdaLayerNorm, AdaLayerNormContinuous, AdaLayerNormZero, RMSNorm, SpatialNorm
from kernel_layers.resnet import ResnetBlock2D, ResnetBlockCondNorm2D
from kernel_layers.sampling import Downsample2D, Upsample2D

__all__ = [
    "BACKENDS", "Attention", "AttentionMixin", "AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor",
    "XFormersAttnProcessor", "Conv2d", "attention_backend", "dispatch_attention", "get_attention_backend",
    "set_attention_backend", "FeedForward", "GEGLU", "GELU", "ApproximateGELU", "SwiGLU", "get_activation",
    "GaussianFourierProjection", "TimestepEmbedding", "Timesteps", "get_timestep_embedding", "AdaGroupNorm",
    "AdaLayerNorm", "AdaLayerNormContinuous", "AdaLayerNormZero", "RMSNorm", "SpatialNorm", "ResnetBlock2D",
    "ResnetBlockCondNorm2D", "Downsample2D", "Upsample2D",
]
