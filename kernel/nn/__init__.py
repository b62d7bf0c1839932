"""Neural building blocks shared by every model family (imports torch; ``import kernel`` does not load it).

Modules: ``attention`` (Attention layer, processors, backend dispatch), ``conv``, ``embeddings``,
``normalization``, ``activations`` (incl. FeedForward), ``resnet``, ``sampling``,
``transformer_2d``, ``blocks_2d`` (VAE/UNet mid-block and encoder/decoder stages).
"""

from kernel.nn.activations import FeedForward, GEGLU, GELU, ApproximateGELU, SwiGLU, get_activation
from kernel.nn.attention import (
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
from kernel.nn.conv import Conv2d
from kernel.nn.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps, get_timestep_embedding
from kernel.nn.normalization import AdaGroupNorm, AdaLayerNorm, AdaLayerNormContinuous, AdaLayerNormZero, RMSNorm, SpatialNorm
from kernel.nn.resnet import ResnetBlock2D, ResnetBlockCondNorm2D
from kernel.nn.sampling import Downsample2D, Upsample2D

__all__ = [
    "BACKENDS", "Attention", "AttentionMixin", "AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor",
    "XFormersAttnProcessor", "Conv2d", "attention_backend", "dispatch_attention", "get_attention_backend",
    "set_attention_backend", "FeedForward", "GEGLU", "GELU", "ApproximateGELU", "SwiGLU", "get_activation",
    "GaussianFourierProjection", "TimestepEmbedding", "Timesteps", "get_timestep_embedding", "AdaGroupNorm",
    "AdaLayerNorm", "AdaLayerNormContinuous", "AdaLayerNormZero", "RMSNorm", "SpatialNorm", "ResnetBlock2D",
    "ResnetBlockCondNorm2D", "Downsample2D", "Upsample2D",
]
