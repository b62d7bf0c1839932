"""``UNet1DModel``: the waveform UNet of Dance Diffusion, with Diffusers' config keys and state-dict layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.embeddings import GaussianFourierProjection, Timesteps

from kernel_dance_diffusion.blocks_1d import DOWN_BLOCKS, MID_BLOCKS, UP_BLOCKS


@dataclass
class UNet1DOutput(BaseOutput):
    """``sample``: ``(B, out_channels, T)`` model output."""

    sample: torch.Tensor = None


def _block(kind: str, table: dict, what: str):
    if kind not in table:
        raise ValueError(f"{what}={kind!r} is not supported; use one of {sorted(table)} (the Dance Diffusion blocks; "
                         "the value-function and temporal-ResNet blocks of Diffusers' RL UNet are not implemented)")
    return table[kind]


class UNet1DModel(ModelMixin):
    """A 1-D UNet over ``(B, C, T)`` signals and a noise level (Dance Diffusion; Harmonai 2022).

    The time embedding (Gaussian Fourier features of ``t``, or sinusoidal ``"positional"`` ones) is
    broadcast along time and concatenated to the input of the first block (``extra_in_channels``
    is its width).  The length must be a multiple of ``2 ** len(up_blocks)``.
    """

    component_kind = "denoiser"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 65536,
        sample_rate: int | None = None,
        in_channels: int = 2,
        out_channels: int = 2,
        extra_in_channels: int = 0,
        time_embedding_type: str = "fourier",
        time_embedding_dim: int | None = None,
        flip_sin_to_cos: bool = True,
        use_timestep_embedding: bool = False,
        freq_shift: float = 0.0,
        down_block_types: tuple[str, ...] = ("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
        mid_block_type: str | None = "UNetMidBlock1D",
        out_block_type: str | None = None,
        block_out_channels: tuple[int, ...] = (32, 32, 64),
        act_fn: str | None = None,
        norm_num_groups: int = 8,
        layers_per_block: int = 1,
        downsample_each_block: bool = False,
    ):
        super().__init__()
        self.sample_size = sample_size
        n = len(down_block_types)
        if len(block_out_channels) != n or len(up_block_types) != n:
            raise ValueError(f"down_block_types ({n}), up_block_types ({len(up_block_types)}) and block_out_channels "
                             f"({len(block_out_channels)}) must have the same length")
        if out_block_type is not None:
            raise ValueError(f"out_block_type={out_block_type!r} is not supported (Dance Diffusion has none; the "
                             "value-function heads of Diffusers' RL UNet are not implemented)")
        if use_timestep_embedding:
            raise ValueError("use_timestep_embedding=True is not supported: it belongs to the temporal-ResNet blocks "
                             "of Diffusers' RL UNet; the Dance Diffusion blocks take the embedding as input channels")
        if downsample_each_block:
            raise ValueError("downsample_each_block=True is not supported (Dance Diffusion's UNet upsamples back)")
        base = block_out_channels[0]
        takes_time = down_block_types[0] == "DownBlock1DNoSkip"  # the first block reads the embedding as channels
        if time_embedding_type == "fourier":
            time_dim = time_embedding_dim or base * 2
            if time_embedding_dim is None and takes_time and extra_in_channels and extra_in_channels != time_dim:
                # Diffusers before 0.36 used 8 frequencies (16 channels) whatever the widths, and the Harmonai
                # checkpoints are saved so; newer versions derive it from block_out_channels and cannot load
                # them.  The first block's extra_in_channels says the width; record it so saved configs carry it.
                time_dim = extra_in_channels
                self.register_to_config(time_embedding_dim=time_dim)
            if time_dim % 2:
                raise ValueError(f"the Fourier time embedding needs an even width, got {time_dim}")
            self.time_proj = GaussianFourierProjection(time_dim // 2, set_W_to_weight=False, log=False,
                                                       flip_sin_to_cos=flip_sin_to_cos)
        elif time_embedding_type == "positional":
            time_dim = base
            self.time_proj = Timesteps(base, flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=freq_shift)
        else:
            raise ValueError(f"time_embedding_type={time_embedding_type!r}; use 'fourier' or 'positional'")
        if takes_time and extra_in_channels != time_dim:
            raise ValueError(f"extra_in_channels={extra_in_channels} must equal the width of the time embedding "
                             f"({time_dim}) that DownBlock1DNoSkip concatenates to the input")

        self.down_blocks = nn.ModuleList()
        channels = in_channels
        for i, kind in enumerate(down_block_types):
            extra = extra_in_channels if i == 0 else 0
            self.down_blocks.append(_block(kind, DOWN_BLOCKS, "down_block_types")(
                out_channels=block_out_channels[i], in_channels=channels + extra))
            channels = block_out_channels[i]
        self.mid_block = None
        if mid_block_type is not None:
            self.mid_block = _block(mid_block_type, MID_BLOCKS, "mid_block_type")(
                mid_channels=channels, in_channels=channels, out_channels=channels)
        widths = list(reversed(block_out_channels))
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(up_block_types):
            out = widths[i + 1] if i < n - 1 else out_channels
            self.up_blocks.append(_block(kind, UP_BLOCKS, "up_block_types")(in_channels=widths[i], out_channels=out))
        self.out_block = None

    @property
    def downsample_factor(self) -> int:
        """The signal length must be a multiple of this (Diffusers' ``2 ** len(up_blocks)``)."""
        return 2 ** len(self.up_blocks)

    def _time_embedding(self, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        t = timestep if isinstance(timestep, torch.Tensor) else torch.tensor([timestep], device=sample.device)
        t = t.to(sample.device).reshape(-1)
        emb = self.time_proj(t)[..., None].to(sample.dtype).expand(-1, -1, sample.shape[2])
        return emb.expand(sample.shape[0], -1, -1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                return_dict: bool = True) -> UNet1DOutput | tuple:
        """``sample`` ``(B, in_channels, T)``, ``timestep`` a number or ``(1,)`` / ``(B,)`` tensor -> ``(B, out_channels, T)``."""
        if sample.ndim != 3:
            raise ValueError(f"sample must be (batch, channels, length), got shape {tuple(sample.shape)}")
        if sample.shape[2] % self.downsample_factor:
            raise ValueError(f"the sample length {sample.shape[2]} must be a multiple of {self.downsample_factor}")
        temb = self._time_embedding(timestep, sample)
        skips: list[torch.Tensor] = []
        x = sample
        for block in self.down_blocks:
            x, res = block(hidden_states=x, temb=temb)
            skips.extend(res)
        if self.mid_block is not None:
            x = self.mid_block(x, temb)
        for block in self.up_blocks:
            x = block(x, res_hidden_states_tuple=(skips.pop(),), temb=temb)
        return UNet1DOutput(sample=x) if return_dict else (x,)
