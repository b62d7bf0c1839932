"""``MotionAdapter``: the motion modules of AnimateDiff (Guo et al., arXiv:2307.04725) without a UNet.

An adapter holds, for each stage of an SD 1.5 UNet, the motion modules that
:class:`~kernel_animatediff.unet_motion.UNetMotionModel` inserts after that stage's layers
(``down_blocks.<i>.motion_modules``, ``mid_block.motion_modules``, ``up_blocks.<i>.motion_modules``)
and, for adapters that widen the UNet input (``conv_in_channels``), a ``conv_in``.  Config keys and
weight names are Diffusers', so a Diffusers ``MotionAdapter`` folder loads unchanged and one saved
here loads in Diffusers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin

from kernel_animatediff.blocks import MotionModules


def per_block(value: Any, n: int, name: str) -> list:
    """``value`` as one entry per block: an int is repeated, a sequence must have ``n`` entries."""
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} blocks; give one int or one entry per block")
    return value


class MotionAdapter(ModelMixin):
    """Motion modules for every stage of a UNet (see the module docstring).

    ``block_out_channels``: the widths of the UNet stages this adapter fits; ``motion_layers_per_block``:
    motion modules per down stage (an up stage has one more); ``motion_max_seq_length``: the most
    frames the modules' positional table covers; ``use_motion_mid_block``: modules in the mid-block too;
    ``conv_in_channels``: a wider input convolution (image-conditioned variants).
    """

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        motion_layers_per_block: int | tuple[int, ...] = 2,
        motion_transformer_layers_per_block: int | tuple = 1,
        motion_mid_block_layers_per_block: int = 1,
        motion_transformer_layers_per_mid_block: int | tuple[int, ...] = 1,
        motion_num_attention_heads: int | tuple[int, ...] = 8,
        motion_norm_num_groups: int = 32,
        motion_max_seq_length: int = 32,
        use_motion_mid_block: bool = True,
        conv_in_channels: int | None = None,
    ):
        super().__init__()
        n = len(block_out_channels)
        if n == 0:
            raise ValueError("block_out_channels must list at least one UNet stage width")
        if not isinstance(motion_max_seq_length, int) or motion_max_seq_length < 1:
            raise ValueError(f"motion_max_seq_length must be a positive int, got {motion_max_seq_length!r}")
        layers = per_block(motion_layers_per_block, n, "motion_layers_per_block")
        tlayers = per_block(motion_transformer_layers_per_block, n, "motion_transformer_layers_per_block")
        heads = per_block(motion_num_attention_heads, n, "motion_num_attention_heads")
        mid_tlayers = per_block(motion_transformer_layers_per_mid_block, motion_mid_block_layers_per_block,
                                "motion_transformer_layers_per_mid_block")

        self.conv_in = (nn.Conv2d(conv_in_channels, block_out_channels[0], kernel_size=3, padding=1)
                        if conv_in_channels else None)

        def modules(channels: int, count: int, head: int, tl) -> MotionModules:
            return MotionModules(channels, layers_per_block=count, transformer_layers_per_block=tl,
                                 num_attention_heads=head, norm_num_groups=motion_norm_num_groups,
                                 max_seq_length=motion_max_seq_length)

        self.down_blocks = nn.ModuleList([modules(c, layers[i], heads[i], tlayers[i])
                                          for i, c in enumerate(block_out_channels)])
        self.mid_block = (modules(block_out_channels[-1], motion_mid_block_layers_per_block, heads[-1], mid_tlayers)
                          if use_motion_mid_block else None)
        rev = list(reversed(range(n)))
        self.up_blocks = nn.ModuleList([modules(block_out_channels[i], layers[i] + 1, heads[i], tlayers[i]) for i in rev])

    def forward(self, sample: torch.Tensor) -> None:
        """An adapter is not run on its own: :meth:`UNetMotionModel.from_unet2d` / ``load_motion_modules`` use it."""
        raise TypeError("MotionAdapter holds weights only; build a UNetMotionModel with "
                        "UNetMotionModel.from_unet2d(unet, motion_adapter) and run that")
