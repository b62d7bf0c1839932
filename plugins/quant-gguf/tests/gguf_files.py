"""Writing GGUF files in the tests, with the gguf package (its quantizers where it has them; K-quant
blocks built from random fields, since gguf-py only dequantises those)."""

from __future__ import annotations

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as T
from kernel_memory.testing import TINY, model_inputs

#: A Flux transformer 256 wide, so that every projection fits the 256-weight K-quant blocks.
WIDE = dict(TINY["flux"][1], attention_head_dim=128, joint_attention_dim=256, pooled_projection_dim=256,
            axes_dims_rope=[32, 48, 48])


def wide_inputs() -> dict:
    x = model_inputs("flux")
    g = torch.Generator().manual_seed(3)
    x.update(encoder_hidden_states=torch.randn(1, 5, 256, generator=g), pooled_projections=torch.randn(1, 256, generator=g))
    return x


def blocks(values: np.ndarray, quant_type: str, rng: np.random.Generator) -> np.ndarray:
    """GGUF rows (uint8) for ``values`` (rows, cols) in ``quant_type``."""
    qt = T[quant_type]
    if quant_type in ("F32", "F16"):
        return values.astype(np.float32 if quant_type == "F32" else np.float16)
    if quant_type in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"):
        return gguf.quants.quantize(values.astype(np.float32), qt)
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = values.shape
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = (np.abs(values).reshape(rows, cols // block, block).max(-1) / 1000).astype(np.float16)
    raw[..., 0:2] = scale.view(np.uint8).reshape(rows, cols // block, 2)          # d
    raw[..., 2:4] = (scale / 2).astype(np.float16).view(np.uint8).reshape(rows, cols // block, 2)  # dmin
    return raw.reshape(rows, -1)


def write_gguf(path, state: dict[str, torch.Tensor], quant_type: str, seed: int = 0) -> None:
    """Write ``state`` with every 2-D weight whose width fits the block in ``quant_type``, the rest in F32."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "kernel-test")
    for key, t in state.items():
        values = t.detach().float().numpy()
        block = gguf.GGML_QUANT_SIZES[T[quant_type]][0] if quant_type not in ("F32", "F16") else 1
        if values.ndim == 2 and key.endswith(".weight") and values.shape[1] % block == 0:
            data = blocks(values, quant_type, rng)
            if data.dtype == np.uint8:
                writer.add_tensor(key, data, raw_shape=data.shape, raw_dtype=T[quant_type])
            else:
                writer.add_tensor(key, data)
        else:
            writer.add_tensor(key, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
