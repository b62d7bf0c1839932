"""CogVideoX (Yang et al., arXiv:2408.06072) for kernel, under Diffusers' names."""

from kernel_cogvideo.autoencoder import AutoencoderKLCogVideoX, CogVideoXCausalConv3d
from kernel_cogvideo.embeddings import CogVideoXPatchEmbed, get_3d_rotary_pos_embed, get_3d_sincos_pos_embed
from kernel_cogvideo.pipelines import CogVideoXFunControlPipeline, CogVideoXImageToVideoPipeline, CogVideoXPipeline, CogVideoXVideoToVideoPipeline, CogVideoXPipelineOutput, DynamicClassifierFreeGuidance
from kernel_cogvideo.scheduler import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
from kernel_cogvideo.transformer import (
    CogVideoXAttnProcessor,
    CogVideoXAttnProcessor2_0,
    CogVideoXBlock,
    CogVideoXLayerNormZero,
    CogVideoXTransformer3DModel,
)

__all__ = ["CogVideoXFunControlPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXPipeline", "CogVideoXVideoToVideoPipeline", "CogVideoXPipelineOutput", "DynamicClassifierFreeGuidance", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "AutoencoderKLCogVideoX", "CogVideoXCausalConv3d", "CogVideoXAttnProcessor", "CogVideoXAttnProcessor2_0", "CogVideoXBlock", "CogVideoXLayerNormZero",
           "CogVideoXPatchEmbed", "CogVideoXTransformer3DModel", "get_3d_rotary_pos_embed", "get_3d_sincos_pos_embed"]
