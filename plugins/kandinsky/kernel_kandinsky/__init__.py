"""Kandinsky 2.2 for kernel: MoVQ, the unCLIP prior and the decoder pipelines (see docs/two-stage.md)."""

from kernel_kandinsky.combined import (
    KandinskyV22CombinedPipeline,
    KandinskyV22Img2ImgCombinedPipeline,
    KandinskyV22InpaintCombinedPipeline,
)
from kernel_kandinsky.decoder import (
    KandinskyV22ControlnetImg2ImgPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22DecoderBase,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
)
from kernel_kandinsky.outputs import ImagePipelineOutput, KandinskyPriorPipelineOutput
from kernel_kandinsky.prior import KandinskyV22PriorPipeline
from kernel_kandinsky.prior_emb2emb import KandinskyV22PriorEmb2EmbPipeline
from kernel_kandinsky.prior_transformer import PriorTransformer, PriorTransformerOutput
from kernel_kandinsky.vq_model import AttnDownEncoderBlock2D, AttnUpDecoderBlock2D, VectorQuantizer, VQEncoderOutput, VQModel

__all__ = [
    "AttnDownEncoderBlock2D", "AttnUpDecoderBlock2D", "ImagePipelineOutput", "KandinskyPriorPipelineOutput",
    "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline", "KandinskyV22InpaintCombinedPipeline",
    "KandinskyV22ControlnetImg2ImgPipeline", "KandinskyV22ControlnetPipeline", "KandinskyV22DecoderBase",
    "KandinskyV22Img2ImgPipeline", "KandinskyV22InpaintPipeline", "KandinskyV22Pipeline",
    "KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22PriorPipeline", "PriorTransformer", "PriorTransformerOutput",
    "VectorQuantizer", "VQEncoderOutput", "VQModel",
]
