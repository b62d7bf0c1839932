"""Kandinsky 2.2 for kernel (see docs/two-stage.md)."""

from kernel_kandinsky.vq_model import AttnDownEncoderBlock2D, AttnUpDecoderBlock2D, VectorQuantizer, VQEncoderOutput, VQModel

__all__ = ["AttnDownEncoderBlock2D", "AttnUpDecoderBlock2D", "VectorQuantizer", "VQEncoderOutput", "VQModel"]
