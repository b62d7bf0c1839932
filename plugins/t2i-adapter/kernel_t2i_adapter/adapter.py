"""T2I-Adapter (Mou et al., "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability for
Text-to-Image Diffusion Models", arXiv:2302.08453): a small convolutional encoder that turns a control image
(sketch, depth, pose, canny edges, ...) into one feature map per UNet down stage.  The UNet adds them inside
its down stages (``down_intrablock_additional_residuals``); the features do not depend on the timestep or the
prompt, so a pipeline computes them once per call.

Three layouts (``adapter_type``), all starting with a pixel unshuffle by ``downscale_factor`` (``(B, C, H, W)``
-> ``(B, C * f**2, H / f, W / f)``):

* ``"full_adapter"`` (SD 1.x/2.x): a 3x3 input conv, then one block per entry of ``channels``, every block
  after the first halving the resolution; features ``channels[i]`` at ``H / (f * 2**i)``.
* ``"full_adapter_xl"`` (SDXL): the same blocks, but only the third one halves the resolution, matching
  SDXL's three down stages plus its mid block: features at ``H/f, H/f, H/2f, H/2f``.
* ``"light_adapter"``: no input conv; bottleneck blocks (a quarter of the width inside) for every entry of
  ``channels`` plus one more at the last width, each after the first halving the resolution.

Module names are Diffusers' state-dict keys (``adapter.conv_in``, ``adapter.body.{i}.resnets.{j}.block1``,
...), so its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin

ADAPTER_TYPES = ("full_adapter", "full_adapter_xl", "light_adapter")


class AdapterResnetBlock(nn.Module):
    """``x + conv(relu(conv3x3(x)))``; the second conv is 1x1 in the full adapters and 3x3 in the light one."""

    def __init__(self, channels: int, second_kernel: int = 1):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, kernel_size=second_kernel, padding=second_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(self.act(self.block1(x)))


def _halve() -> nn.Module:
    # ceil_mode: odd sizes round up, as the UNet's stride-2 convolutions do.
    return nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True)


class AdapterBlock(nn.Module):
    """Full-adapter stage: optional 2x average-pool, a 1x1 conv when the width changes, residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool = False):
        super().__init__()
        self.downsample = _halve() if down else None
        self.in_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        self.resnets = nn.Sequential(*[AdapterResnetBlock(out_channels, 1) for _ in range(num_res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.resnets(x)


class LightAdapterBlock(nn.Module):
    """Light-adapter stage: optional 2x average-pool, 1x1 down to ``out / 4``, residual blocks, 1x1 up to ``out``."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool = False):
        super().__init__()
        mid = out_channels // 4
        self.downsample = _halve() if down else None
        self.in_conv = nn.Conv2d(in_channels, mid, kernel_size=1)
        self.resnets = nn.Sequential(*[AdapterResnetBlock(mid, 3) for _ in range(num_res_blocks)])
        self.out_conv = nn.Conv2d(mid, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.out_conv(self.resnets(self.in_conv(x)))


class _Encoder(nn.Module):
    """The stages of one adapter layout; ``forward`` returns every stage's output."""

    def __init__(self, adapter_type: str, in_channels: int, channels: Sequence[int], num_res_blocks: int,
                 downscale_factor: int):
        super().__init__()
        c = list(channels)
        unshuffled = in_channels * downscale_factor**2
        self.unshuffle = nn.PixelUnshuffle(downscale_factor)
        if adapter_type == "light_adapter":
            self.conv_in = None
            widths = [(unshuffled, c[0], False)] + [(c[i - 1], c[i], True) for i in range(1, len(c))] \
                + [(c[-1], c[-1], True)]
            self.body = nn.ModuleList(LightAdapterBlock(a, b, num_res_blocks, down=d) for a, b, d in widths)
            self.total_downscale_factor = downscale_factor * 2 ** len(c)
            return
        self.conv_in = nn.Conv2d(unshuffled, c[0], kernel_size=3, padding=1)
        if adapter_type == "full_adapter":
            widths = [(c[0], c[0], False)] + [(c[i - 1], c[i], True) for i in range(1, len(c))]
            self.total_downscale_factor = downscale_factor * 2 ** (len(c) - 1)
        else:  # full_adapter_xl: SDXL halves once, at its third stage; stages after it keep their width
            widths = [(c[i - 1] if i in (1, 2) else c[i], c[i], i == 2) for i in range(len(c))]
            self.total_downscale_factor = downscale_factor * 2
        self.body = nn.ModuleList(AdapterBlock(a, b, num_res_blocks, down=d) for a, b, d in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.unshuffle(x)
        if self.conv_in is not None:
            x = self.conv_in(x)
        features = []
        for block in self.body:
            x = block(x)
            features.append(x)
        return features


class T2IAdapter(ModelMixin):
    """A T2I-Adapter with Diffusers' config keys and state-dict names (see the module docstring).

    ``forward(x)``: the control image ``(B, in_channels, H, W)`` in ``[0, 1]``, ``H`` and ``W`` multiples of
    ``downscale_factor`` -> a list of feature maps ``(B, C_i, H_i, W_i)``, one per UNet down stage (SDXL: the
    last one goes to the mid block).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (320, 640, 1280, 1280),
        num_res_blocks: int = 2,
        downscale_factor: int = 8,
        adapter_type: str = "full_adapter",
    ):
        super().__init__()
        if adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type must be one of {', '.join(ADAPTER_TYPES)}, got {adapter_type!r}")
        channels = list(channels)
        if not channels or any(not isinstance(ch, int) or ch <= 0 for ch in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
        for name, value in (("in_channels", in_channels), ("num_res_blocks", num_res_blocks),
                            ("downscale_factor", downscale_factor)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if adapter_type == "full_adapter_xl":
            for i in range(3, len(channels)):
                if channels[i] != channels[i - 1]:
                    raise ValueError(f"full_adapter_xl keeps the width after its third stage: channels[{i}] "
                                     f"({channels[i]}) must equal channels[{i - 1}] ({channels[i - 1]})")
        if adapter_type == "light_adapter" and any(ch < 4 for ch in channels):
            raise ValueError(f"light_adapter blocks work at a quarter of their width: channels must be >= 4, "
                             f"got {channels!r}")
        self.adapter = _Encoder(adapter_type, in_channels, channels, num_res_blocks, downscale_factor)

    @property
    def downscale_factor(self) -> int:
        """The pixel-unshuffle factor: the control image's height and width must be multiples of it."""
        return self.config.downscale_factor

    @property
    def total_downscale_factor(self) -> int:
        """Input size over the smallest feature map's size."""
        return self.adapter.total_downscale_factor

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"the adapter takes a (batch, {self.config.in_channels}, height, width) control image, "
                             f"got shape {tuple(x.shape)}")
        f = self.config.downscale_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"the control image's height and width must be multiples of the adapter's "
                             f"downscale_factor ({f}), got {tuple(x.shape[-2:])}")
        return self.adapter(x)
