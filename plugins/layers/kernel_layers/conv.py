"""``Conv2d``: ``nn.Conv2d`` with a faster CPU path for big weights on few output positions.

On the CPU, PyTorch runs float32 convolutions through oneDNN, which copies the weight into its
own blocked layout on every call.  For a 3x3 convolution with 1280 or more channels (59 MB of
weight and up) at the low-resolution end of a UNet (8x8 latents and below) that copy costs more
than the arithmetic: the layer is bound by memory traffic, not by multiply-adds.  There the same
convolution is cheaper as one matrix product over the unfolded input (im2col), which reads the
weight once, in its stored layout.

The switch is per call and only for inference (grad mode off), float32, CPU tensors, ``groups=1``
and zero padding; everything else goes to ``nn.Conv2d`` unchanged.  Parameters, state-dict keys
and ``isinstance(m, nn.Conv2d)`` are those of ``nn.Conv2d``, so checkpoints, LoRA (peft) and
hooks see no difference.  The two paths agree to float32 rounding (~1e-6 relative).

The thresholds are class attributes, so a user (or a test) can tune or disable the path:
``Conv2d.gemm_min_weight_bytes`` (default 32 MiB, about one last-level cache slice of a server
CPU) and ``Conv2d.gemm_max_positions`` (batch x output height x output width, default 128;
``0`` disables the path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs weight-bound CPU inference calls as im2col + one GEMM (see module doc)."""

    gemm_min_weight_bytes: int = 32 << 20
    gemm_max_positions: int = 128

    def _use_gemm(self, x: torch.Tensor) -> bool:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or self.groups != 1
                or self.padding_mode != "zeros" or isinstance(self.padding, str) or torch.is_grad_enabled()):
            return False
        weight = self.weight
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return False
        if weight.numel() * weight.element_size() < self.gemm_min_weight_bytes:
            return False
        out_h, out_w = self._output_size(x.shape[-2], x.shape[-1])
        return 0 < x.shape[0] * out_h * out_w <= self.gemm_max_positions

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        sizes = []
        for size, k, s, p, d in zip((height, width), self.kernel_size, self.stride, self.padding, self.dilation):
            sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Conv2d's argument name
        if not self._use_gemm(input):
            return super().forward(input)
        batch = input.shape[0]
        out_h, out_w = self._output_size(input.shape[-2], input.shape[-1])
        # (B, C*kh*kw, L) -> (B, L, C*kh*kw) @ W(O, C*kh*kw)^T -> (B, L, O) -> (B, O, H, W)
        columns = F.unfold(input, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        out = F.linear(columns.transpose(1, 2), self.weight.reshape(self.out_channels, -1), self.bias)
        return out.transpose(1, 2).reshape(batch, self.out_channels, out_h, out_w)
