"""The CogVideoX 3-D causal VAE (Yang et al., arXiv:2408.06072, Sec. 2.1).

Videos ``(B, C, F, H, W)`` with ``F = 1 + 4k`` frames become latents ``(B, latent_channels, 1 + k, H/8, W/8)``:
every convolution is causal in time (padded with copies of the first frame, never with future frames), and
the first ``log2(temporal_compression_ratio)`` stages also halve (encoder) or double (decoder) the frame
count while keeping the first frame on its own.  The decoder is conditioned on the latents at every
norm (spatially conditioned GroupNorm, as in MoVQ, Zheng et al., arXiv:2209.09002).

Long videos are encoded 8 frames and decoded 2 latent frames at a time; each causal convolution carries
the last frames of the previous batch over to the next (:func:`frame_batches`); GroupNorm statistics stay
per batch, as in the reference.  ``enable_slicing`` runs one video of a batch at a time; ``enable_tiling`` runs
overlapping spatial tiles, blended as Diffusers does.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_autoencoders.autoencoder_kl import AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution
from kernel_autoencoders.latents import LatentSpaceMixin
from kernel_layers.activations import get_activation

_SAFE_CONV_GIB = 2.0


class CogVideoXSafeConv3d(nn.Conv3d):
    """Conv3d that splits inputs above ~2 GiB along time (with the kernel's overlap) to bound peak memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gib = x.numel() * 2 / 1024**3
        if gib <= _SAFE_CONV_GIB:
            return super().forward(x)
        k = self.kernel_size[0]
        chunks = list(torch.chunk(x, int(gib / _SAFE_CONV_GIB) + 1, dim=2))
        if k > 1:
            chunks = [chunks[0]] + [torch.cat([chunks[i - 1][:, :, 1 - k:], chunks[i]], dim=2)
                                    for i in range(1, len(chunks))]
        return torch.cat([super(CogVideoXSafeConv3d, self).forward(c) for c in chunks], dim=2)


class CogVideoXCausalConv3d(nn.Module):
    """3-D convolution, causal in time: ``kernel_t - 1`` frames of left context, zero-padded in space.

    The context is the previous frame batch's last frames inside :func:`frame_batches`, else copies of
    the first frame (``pad_mode="replicate"`` pads every side by replication instead).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int = 1, dilation: int = 1, pad_mode: str = "constant"):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.pad_mode = pad_mode
        self.time_kernel_size = kt
        self.time_causal_padding = ((kw - 1) // 2, (kw - 1) // 2, (kh - 1) // 2, (kh - 1) // 2, kt - 1, 0)
        stride = stride if isinstance(stride, tuple) else (stride, 1, 1)
        self.conv = CogVideoXSafeConv3d(in_channels, out_channels, (kt, kh, kw), stride=stride,
                                        dilation=(dilation, 1, 1),
                                        padding=0 if pad_mode == "replicate" else (0, (kh - 1) // 2, (kw - 1) // 2))
        self.conv_cache: torch.Tensor | None = None
        self.streaming = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode == "replicate":
            return self.conv(F.pad(x, self.time_causal_padding, mode="replicate"))
        k = self.time_kernel_size
        if k > 1:
            context = self.conv_cache if self.conv_cache is not None else x[:, :, :1].expand(-1, -1, k - 1, -1, -1)
            x = torch.cat([context, x], dim=2)
            if self.streaming:
                self.conv_cache = x[:, :, 1 - k:].clone()
        return self.conv(x)


@contextlib.contextmanager
def frame_batches(module: nn.Module) -> Iterator[None]:
    """Inside, successive calls of ``module`` continue one video: causal convolutions keep their context."""
    convs = [m for m in module.modules() if isinstance(m, CogVideoXCausalConv3d)]
    for conv in convs:
        conv.conv_cache, conv.streaming = None, True
    try:
        yield
    finally:
        for conv in convs:
            conv.conv_cache, conv.streaming = None, False


def _frames_2d(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D op to every frame of ``(B, C, F, H, W)``."""
    b, _, f = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.view(b, f, *y.shape[1:]).transpose(1, 2)


class CogVideoXDownsample3D(nn.Module):
    """Stride-2 spatial conv (padded right/bottom); ``compress_time`` first averages frame pairs after frame 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2, padding: int = 0,
                 compress_time: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compress_time:
            b, c, f, h, w = x.shape
            seq = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, f)
            if f % 2:
                rest = F.avg_pool1d(seq[..., 1:], kernel_size=2, stride=2) if f > 1 else seq[..., 1:]
                seq = torch.cat([seq[..., :1], rest], dim=-1)
            else:
                seq = F.avg_pool1d(seq, kernel_size=2, stride=2)
            x = seq.reshape(b, h, w, c, seq.shape[-1]).permute(0, 3, 4, 1, 2)
        return _frames_2d(self.conv, F.pad(x, (0, 1, 0, 1)))


class CogVideoXUpsample3D(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv; ``compress_time`` also doubles the frames after frame 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 compress_time: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.shape[2]
        if self.compress_time and f > 1 and f % 2:
            first = F.interpolate(x[:, :, 0], scale_factor=2.0)[:, :, None]
            x = torch.cat([first, F.interpolate(x[:, :, 1:], scale_factor=2.0)], dim=2)
        elif self.compress_time and f > 1:
            x = F.interpolate(x, scale_factor=2.0)
        else:
            x = _frames_2d(lambda t: F.interpolate(t, scale_factor=2.0), x)
        return _frames_2d(self.conv, x)


class CogVideoXSpatialNorm3D(nn.Module):
    """GroupNorm of ``f`` scaled and shifted by 1x1x1 convs of the latents ``zq`` resized to ``f``."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int = 32):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=groups, eps=1e-6, affine=True)
        self.conv_y = CogVideoXCausalConv3d(zq_channels, f_channels, kernel_size=1, stride=1)
        self.conv_b = CogVideoXCausalConv3d(zq_channels, f_channels, kernel_size=1, stride=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        if f.shape[2] > 1 and f.shape[2] % 2:
            # the first frame has its own latent frame: resize it apart from the rest
            zq = torch.cat([F.interpolate(zq[:, :, :1], size=(1, *f.shape[-2:])),
                            F.interpolate(zq[:, :, 1:], size=(f.shape[2] - 1, *f.shape[-2:]))], dim=2)
        else:
            zq = F.interpolate(zq, size=f.shape[-3:])
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class CogVideoXResnetBlock3D(nn.Module):
    """Pre-activation residual block of causal convs; GroupNorm, or spatial norm when ``spatial_norm_dim`` is set."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 temb_channels: int = 512, groups: int = 32, eps: float = 1e-6, non_linearity: str = "swish",
                 conv_shortcut: bool = False, spatial_norm_dim: int | None = None, pad_mode: str = "first"):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.nonlinearity = get_activation(non_linearity)
        self.use_conv_shortcut = conv_shortcut
        self.spatial_norm_dim = spatial_norm_dim
        if spatial_norm_dim is None:
            self.norm1 = nn.GroupNorm(num_channels=in_channels, num_groups=groups, eps=eps)
            self.norm2 = nn.GroupNorm(num_channels=out_channels, num_groups=groups, eps=eps)
        else:
            self.norm1 = CogVideoXSpatialNorm3D(in_channels, spatial_norm_dim, groups=groups)
            self.norm2 = CogVideoXSpatialNorm3D(out_channels, spatial_norm_dim, groups=groups)
        self.conv1 = CogVideoXCausalConv3d(in_channels, out_channels, kernel_size=3, pad_mode=pad_mode)
        self.temb_proj = nn.Linear(temb_channels, out_channels) if temb_channels > 0 else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CogVideoXCausalConv3d(out_channels, out_channels, kernel_size=3, pad_mode=pad_mode)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = (CogVideoXCausalConv3d(in_channels, out_channels, kernel_size=3, pad_mode=pad_mode)
                                  if conv_shortcut else CogVideoXSafeConv3d(in_channels, out_channels, kernel_size=1))

    def _norm(self, norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        return norm(x, zq) if zq is not None else norm(x)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self._norm(self.norm1, x, zq)))
        if temb is not None and self.temb_proj is not None:
            h = h + self.temb_proj(self.nonlinearity(temb))[:, :, None, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self._norm(self.norm2, h, zq))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h + x


class _ResnetStage(nn.Module):
    """``num_layers`` residual blocks then an optional resampler (the down / mid / up blocks)."""

    _supports_gradient_checkpointing = True

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, resampler: nn.Module | None = None,
                 resampler_name: str | None = None, **resnet_kwargs):
        super().__init__()
        self.resnets = nn.ModuleList([
            CogVideoXResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, **resnet_kwargs)
            for i in range(num_layers)])
        self._resampler_name = resampler_name
        if resampler_name is not None:  # "downsamplers" / "upsamplers", the checkpoint's names
            setattr(self, resampler_name, nn.ModuleList([resampler]) if resampler is not None else None)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                zq: torch.Tensor | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = torch.utils.checkpoint.checkpoint(resnet, hidden_states, temb, zq, use_reentrant=False)
            else:
                hidden_states = resnet(hidden_states, temb, zq)
        for resampler in (getattr(self, self._resampler_name) if self._resampler_name else None) or ():
            hidden_states = resampler(hidden_states)
        return hidden_states


class CogVideoXDownBlock3D(_ResnetStage):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 add_downsample: bool = True, downsample_padding: int = 0, compress_time: bool = False,
                 pad_mode: str = "first"):
        down = CogVideoXDownsample3D(out_channels, out_channels, padding=downsample_padding,
                                     compress_time=compress_time) if add_downsample else None
        super().__init__(in_channels, out_channels, num_layers, down, "downsamplers", dropout=dropout,
                         temb_channels=temb_channels, groups=resnet_groups, eps=resnet_eps,
                         non_linearity=resnet_act_fn, pad_mode=pad_mode)


class CogVideoXMidBlock3D(_ResnetStage):
    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 spatial_norm_dim: int | None = None, pad_mode: str = "first"):
        super().__init__(in_channels, in_channels, num_layers, dropout=dropout, temb_channels=temb_channels,
                         groups=resnet_groups, eps=resnet_eps, spatial_norm_dim=spatial_norm_dim,
                         non_linearity=resnet_act_fn, pad_mode=pad_mode)


class CogVideoXUpBlock3D(_ResnetStage):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 spatial_norm_dim: int = 16, add_upsample: bool = True, upsample_padding: int = 1,
                 compress_time: bool = False, pad_mode: str = "first"):
        up = CogVideoXUpsample3D(out_channels, out_channels, padding=upsample_padding,
                                 compress_time=compress_time) if add_upsample else None
        super().__init__(in_channels, out_channels, num_layers, up, "upsamplers", dropout=dropout,
                         temb_channels=temb_channels, groups=resnet_groups, eps=resnet_eps,
                         spatial_norm_dim=spatial_norm_dim, non_linearity=resnet_act_fn, pad_mode=pad_mode)


def _check_types(types, allowed: str, what: str) -> None:
    for t in types:
        if t != allowed:
            raise ValueError(f"{what} {t!r} is not supported; CogVideoX uses {allowed!r}")


class CogVideoXEncoder3D(nn.Module):
    """conv_in -> down stages (the first log2(temporal ratio) also halve frames) -> 2 mid blocks -> moments."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, down_block_types=("CogVideoXDownBlock3D",) * 4,
                 block_out_channels=(128, 256, 256, 512), layers_per_block: int = 3, act_fn: str = "silu",
                 norm_eps: float = 1e-6, norm_num_groups: int = 32, dropout: float = 0.0, pad_mode: str = "first",
                 temporal_compression_ratio: float = 4):
        super().__init__()
        _check_types(down_block_types, "CogVideoXDownBlock3D", "down block type")
        time_levels = int(math.log2(temporal_compression_ratio))
        self.conv_in = CogVideoXCausalConv3d(in_channels, block_out_channels[0], kernel_size=3, pad_mode=pad_mode)
        self.down_blocks = nn.ModuleList([
            CogVideoXDownBlock3D(block_out_channels[max(i - 1, 0)], channels, temb_channels=0, dropout=dropout,
                                 num_layers=layers_per_block, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                                 resnet_groups=norm_num_groups, add_downsample=i < len(block_out_channels) - 1,
                                 compress_time=i < time_levels)
            for i, channels in enumerate(block_out_channels)])
        self.mid_block = CogVideoXMidBlock3D(block_out_channels[-1], temb_channels=0, dropout=dropout, num_layers=2,
                                             resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                                             pad_mode=pad_mode)
        self.norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = CogVideoXCausalConv3d(block_out_channels[-1], 2 * out_channels, kernel_size=3, pad_mode=pad_mode)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(sample)
        for block in self.down_blocks:
            h = block(h, temb)
        h = self.mid_block(h, temb)
        return self.conv_out(self.conv_act(self.norm_out(h)))


class CogVideoXDecoder3D(nn.Module):
    """conv_in -> 2 mid blocks -> up stages (first log2(temporal ratio) also double frames) -> RGB; latent-conditioned norms."""

    def __init__(self, in_channels: int = 16, out_channels: int = 3, up_block_types=("CogVideoXUpBlock3D",) * 4,
                 block_out_channels=(128, 256, 256, 512), layers_per_block: int = 3, act_fn: str = "silu",
                 norm_eps: float = 1e-6, norm_num_groups: int = 32, dropout: float = 0.0, pad_mode: str = "first",
                 temporal_compression_ratio: float = 4):
        super().__init__()
        _check_types(up_block_types, "CogVideoXUpBlock3D", "up block type")
        widths = list(reversed(block_out_channels))
        time_levels = int(math.log2(temporal_compression_ratio))
        self.conv_in = CogVideoXCausalConv3d(in_channels, widths[0], kernel_size=3, pad_mode=pad_mode)
        self.mid_block = CogVideoXMidBlock3D(widths[0], temb_channels=0, num_layers=2, resnet_eps=norm_eps,
                                             resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                                             spatial_norm_dim=in_channels, pad_mode=pad_mode)
        self.up_blocks = nn.ModuleList([
            CogVideoXUpBlock3D(widths[max(i - 1, 0)], channels, temb_channels=0, dropout=dropout,
                               num_layers=layers_per_block + 1, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                               resnet_groups=norm_num_groups, spatial_norm_dim=in_channels,
                               add_upsample=i < len(widths) - 1, compress_time=i < time_levels, pad_mode=pad_mode)
            for i, channels in enumerate(widths)])
        self.norm_out = CogVideoXSpatialNorm3D(widths[-1], in_channels, groups=norm_num_groups)
        self.conv_act = nn.SiLU()
        self.conv_out = CogVideoXCausalConv3d(widths[-1], out_channels, kernel_size=3, pad_mode=pad_mode)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.mid_block(self.conv_in(sample), temb, sample)
        for block in self.up_blocks:
            h = block(h, temb, sample)
        return self.conv_out(self.conv_act(self.norm_out(h, sample)))


def _frame_ranges(frames: int, per_batch: int) -> list[tuple[int, int]]:
    """Frame batches of ``per_batch``; the remainder joins the first batch (the reference's split)."""
    extra = frames % per_batch
    n = max(frames // per_batch, 1)
    return [(0 if i == 0 else per_batch * i + extra, per_batch * (i + 1) + extra) for i in range(n)]


def cogvideox_latent_frames(frames: int, temporal_compression_ratio: int = 4, batch: int = 8) -> int:
    """Latent frames the VAE encodes ``frames`` frames into: per frame batch (see :func:`_frame_ranges`) each
    time-compressing stage keeps frame 0 and averages the pairs after it, i.e. ``ceil(n / 2)``."""
    total = 0
    for start, end in _frame_ranges(frames, batch):
        n = min(end, frames) - start
        for _ in range(int(math.log2(temporal_compression_ratio))):
            n -= n // 2
        total += n
    return total


def cogvideox_decoded_frames(latent_frames: int, temporal_compression_ratio: int = 4, batch: int = 2) -> int:
    """Frames the VAE decodes ``latent_frames`` into: per latent batch each time-expanding stage doubles the frames,
    an odd count (above one) keeping frame 0 single.  So ``1 + t (f - 1)`` for odd ``f`` and ``t f`` for even ``f``
    with the default batches: 13 -> 49 and 21 -> 81, but 2 -> 8."""
    total = 0
    for start, end in _frame_ranges(latent_frames, batch):
        n = min(end, latent_frames) - start
        for _ in range(int(math.log2(temporal_compression_ratio))):
            n = 2 * n - 1 if n > 1 and n % 2 else 2 * n if n > 1 else n
        total += n
    return total


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Cross-fade the last ``extent`` slices of ``a`` into the first of ``b`` along ``dim`` (``b`` in place)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    for i in range(extent):
        b.select(dim, i).copy_(a.select(dim, a.shape[dim] - extent + i) * (1 - i / extent)
                               + b.select(dim, i) * (i / extent))
    return b


class AutoencoderKLCogVideoX(LatentSpaceMixin, ModelMixin):
    """CogVideoX VAE with Diffusers' config keys and weight names (see the module docstring)."""

    component_kind = "autoencoder"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["CogVideoXResnetBlock3D"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("CogVideoXDownBlock3D",) * 4,
        up_block_types: tuple[str, ...] = ("CogVideoXUpBlock3D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 256, 512),
        latent_channels: int = 16,
        layers_per_block: int = 3,
        act_fn: str = "silu",
        norm_eps: float = 1e-6,
        norm_num_groups: int = 32,
        temporal_compression_ratio: float = 4,
        sample_height: int = 480,
        sample_width: int = 720,
        scaling_factor: float = 1.15258426,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: float = True,
        use_quant_conv: bool = False,
        use_post_quant_conv: bool = False,
        invert_scale_latents: bool = False,
    ):
        super().__init__()
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        common = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
                      norm_eps=norm_eps, norm_num_groups=norm_num_groups,
                      temporal_compression_ratio=temporal_compression_ratio)
        self.encoder = CogVideoXEncoder3D(in_channels, latent_channels, down_block_types, **common)
        self.decoder = CogVideoXDecoder3D(latent_channels, out_channels, up_block_types, **common)
        # The reference sizes these by out_channels (not latent_channels); kept for checkpoint compatibility.
        self.quant_conv = CogVideoXSafeConv3d(2 * out_channels, 2 * out_channels, 1) if use_quant_conv else None
        self.post_quant_conv = CogVideoXSafeConv3d(out_channels, out_channels, 1) if use_post_quant_conv else None
        self.spatial_compression_ratio = 2 ** (len(block_out_channels) - 1)
        self.temporal_compression_ratio = int(temporal_compression_ratio)
        self.use_slicing = False
        self.use_tiling = False
        self.num_latent_frames_batch_size = 2
        self.num_sample_frames_batch_size = 8
        self.tile_sample_min_height = sample_height // 2
        self.tile_sample_min_width = sample_width // 2
        self.tile_overlap_factor_height = 1 / 6
        self.tile_overlap_factor_width = 1 / 5

    # ------------------------------------------------------------------ switches
    @property
    def tile_latent_min_height(self) -> int:
        return int(self.tile_sample_min_height / self.spatial_compression_ratio)

    @property
    def tile_latent_min_width(self) -> int:
        return int(self.tile_sample_min_width / self.spatial_compression_ratio)

    def enable_slicing(self) -> None:
        """Encode/decode one video of a batch at a time (bounded memory, identical result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
                      tile_overlap_factor_height: float | None = None,
                      tile_overlap_factor_width: float | None = None) -> None:
        """Process overlapping spatial tiles of at least the given pixel size (bounded memory, close result)."""
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
        self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
        self.tile_overlap_factor_height = tile_overlap_factor_height or self.tile_overlap_factor_height
        self.tile_overlap_factor_width = tile_overlap_factor_width or self.tile_overlap_factor_width

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def num_latent_frames(self, num_frames: int) -> int:
        """How many latent frames :meth:`encode` gives for a video of ``num_frames`` frames."""
        return cogvideox_latent_frames(num_frames, self.temporal_compression_ratio, self.num_sample_frames_batch_size)

    def num_decoded_frames(self, latent_frames: int) -> int:
        """How many frames :meth:`decode` gives for ``latent_frames`` latent frames."""
        return cogvideox_decoded_frames(latent_frames, self.temporal_compression_ratio,
                                        self.num_latent_frames_batch_size)

    # ------------------------------------------------------------------ frame-batched passes
    def _encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        pieces = []
        with frame_batches(self.encoder):
            for start, end in _frame_ranges(x.shape[2], self.num_sample_frames_batch_size):
                h = self.encoder(x[:, :, start:end])
                pieces.append(self.quant_conv(h) if self.quant_conv is not None else h)
        return torch.cat(pieces, dim=2)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        pieces = []
        with frame_batches(self.decoder):
            for start, end in _frame_ranges(z.shape[2], self.num_latent_frames_batch_size):
                piece = z[:, :, start:end]
                if self.post_quant_conv is not None:
                    piece = self.post_quant_conv(piece)
                pieces.append(self.decoder(piece))
        return torch.cat(pieces, dim=2)

    def _tiled(self, x: torch.Tensor, fn, tile: tuple[int, int], out_tile: tuple[int, int]) -> torch.Tensor:
        """Run ``fn`` on overlapping ``tile`` (h, w) pieces of ``x``; blend and crop the ``out_tile`` results."""
        factors = (self.tile_overlap_factor_height, self.tile_overlap_factor_width)
        stride = [int(t * (1 - f)) for t, f in zip(tile, factors)]
        extent = [int(t * f) for t, f in zip(out_tile, factors)]
        limit = [t - e for t, e in zip(out_tile, extent)]
        rows = [[fn(x[:, :, :, i:i + tile[0], j:j + tile[1]]) for j in range(0, x.shape[4], stride[1])]
                for i in range(0, x.shape[3], stride[0])]
        out_rows = []
        for i, row in enumerate(rows):
            pieces = []
            for j, piece in enumerate(row):
                if i > 0:
                    piece = _blend(rows[i - 1][j], piece, extent[0], dim=3)
                if j > 0:
                    piece = _blend(row[j - 1], piece, extent[1], dim=4)
                pieces.append(piece[:, :, :, :limit[0], :limit[1]])
            out_rows.append(torch.cat(pieces, dim=4))
        return torch.cat(out_rows, dim=3)

    def tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._tiled(x, self._encode_frames, (self.tile_sample_min_height, self.tile_sample_min_width),
                           (self.tile_latent_min_height, self.tile_latent_min_width))

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True):
        out = self._tiled(z, self._decode_frames, (self.tile_latent_min_height, self.tile_latent_min_width),
                          (self.tile_sample_min_height, self.tile_sample_min_width))
        return DecoderOutput(sample=out) if return_dict else (out,)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (x.shape[4] > self.tile_sample_min_width or x.shape[3] > self.tile_sample_min_height):
            return self.tiled_encode(x)
        return self._encode_frames(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (z.shape[4] > self.tile_latent_min_width or z.shape[3] > self.tile_latent_min_height):
            return self.tiled_decode(z).sample
        return self._decode_frames(z)

    # ------------------------------------------------------------------ public API
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Videos ``(B, C, F, H, W)`` in [-1, 1] -> posterior over ``(B, latent_channels, 1 + (F-1)/4, H/8, W/8)``."""
        if x.ndim != 5:
            raise ValueError(f"x must be a video (batch, channels, frames, height, width), got shape {tuple(x.shape)}")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(piece) for piece in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Latents ``(B, latent_channels, f, h, w)`` -> videos ``(B, out_channels, 1 + 4(f-1), 8h, 8w)``."""
        if z.ndim != 5:
            raise ValueError(f"z must be video latents (batch, channels, frames, height, width), got shape "
                             f"{tuple(z.shape)}")
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(piece) for piece in z.split(1)])
        else:
            decoded = self._decode(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)
