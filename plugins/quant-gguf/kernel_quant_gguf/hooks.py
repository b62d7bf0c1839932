"""kernel-quant-gguf's hook: ``.gguf`` files for the kernel's checkpoint reader (``Model.from_single_file``).

Imported when the kernel first opens a file that is not safetensors; it reads four bytes and imports
torch and the gguf package only for a GGUF file.
"""

from __future__ import annotations

from kernel.hookspecs import hookimpl

MAGIC = b"GGUF"


@hookimpl
def kernel_open_checkpoint(path):
    """A GGUF file (recognised by its magic bytes, whatever its name) as lazy tensors, their logical shapes,
    and ``GGUFQuantizationConfig()`` for callers that give no ``quantization_config``."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != MAGIC:
                return None
    except OSError:
        return None
    from kernel_quant_gguf.quantizer import GGUFQuantizationConfig
    from kernel_quant_gguf.tensor import GGUFFile

    file = GGUFFile(path)
    return file, file.shapes, GGUFQuantizationConfig()
