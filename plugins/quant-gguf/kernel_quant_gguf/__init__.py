"""GGUF weights: ``GGUFQuantizationConfig`` (Diffusers' name) and ``.gguf`` files.

    transformer = FluxTransformer2DModel.from_single_file(                # a file in BFL's layout, as city96's
        "flux1-dev-Q4_K_S.gguf", quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16),
        torch_dtype=torch.bfloat16)
    model = from_gguf(FluxTransformer2DModel, "transformer.gguf", config="folder/transformer")  # Diffusers' names

A linear layer whose weight is quantized in the file becomes a :class:`GGUFLinear`: it keeps the
raw blocks (``uint8``, as many bytes as the file holds) and dequantises them to ``compute_dtype``
each time it runs (:mod:`kernel_quant_gguf.dequant`), so only one layer's weights are ever in full
precision. Quantized tensors of other layers are dequantised once while loading; ``F32`` /
``F16`` / ``BF16`` tensors load as they are. A type outside :data:`SUPPORTED` is an error that lists them.

``Model.from_single_file`` reads ``.gguf`` files through this plugin's ``kernel_open_checkpoint``
hook (:mod:`kernel_quant_gguf.hooks`): the file's quantized tensors are :class:`GGUFTensor` objects,
which the single-file converters split by rows (fused ``qkv`` projections) without decoding, and which
tell the quantizer their types; a file loaded without ``quantization_config`` gets
``GGUFQuantizationConfig()``.
"""

from __future__ import annotations

__all__ = ["GGUFLinear", "GGUFQuantizationConfig", "GGUFQuantizer", "GGUFTensor", "SUPPORTED", "from_gguf",
           "read_gguf"]


def __getattr__(name: str):  # torch loads on first use: ``kernel plugins`` imports the hooks module only
    if name == "GGUFTensor":
        from kernel_quant_gguf.tensor import GGUFTensor

        return GGUFTensor
    if name == "SUPPORTED":
        from kernel_quant_gguf.dequant import SUPPORTED

        return SUPPORTED
    if name in __all__:
        from kernel_quant_gguf import quantizer

        return getattr(quantizer, name)
    raise AttributeError(name)
