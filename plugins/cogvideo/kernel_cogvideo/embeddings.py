"""Position embeddings and patch embedding of CogVideoX (Yang et al., arXiv:2408.06072).

* :func:`get_3d_sincos_pos_embed` -- fixed sin-cos table over ``(frames, rows, cols)`` patches: the first
  quarter of the channels encodes the frame, the rest the (column, row) position (CogVideoX-2b).
* :func:`get_3d_rotary_pos_embed` -- 3-D RoPE (Su et al., arXiv:2104.09864) tables for the video tokens:
  a quarter of each head's channels rotate with the frame index, 3/8 with the row, 3/8 with the column
  (CogVideoX-5b and 1.5).
* :class:`CogVideoXPatchEmbed` -- text projection and video patchify joined as ``[text, video]`` tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from kernel_flux.rotary import rope_cos_sin
from kernel_layers.dit_embeddings import sincos_1d


def get_3d_sincos_pos_embed(embed_dim: int, spatial_size: int | tuple[int, int], temporal_size: int,
                            spatial_interpolation_scale: float = 1.0, temporal_interpolation_scale: float = 1.0,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """``(temporal_size, rows * cols, embed_dim)`` table; ``spatial_size`` is ``(cols, rows)`` as in the reference."""
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 3-D sin-cos embedding, got {embed_dim}")
    cols, rows = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
    spatial_dim, temporal_dim = 3 * embed_dim // 4, embed_dim // 4
    row = torch.arange(rows, dtype=torch.float32, device=device) / spatial_interpolation_scale
    col = torch.arange(cols, dtype=torch.float32, device=device) / spatial_interpolation_scale
    col_grid, row_grid = col[None, :].expand(rows, cols), row[:, None].expand(rows, cols)
    spatial = torch.cat([sincos_1d(spatial_dim // 2, col_grid), sincos_1d(spatial_dim // 2, row_grid)], dim=1)
    frames = torch.arange(temporal_size, dtype=torch.float32, device=device) / temporal_interpolation_scale
    temporal = sincos_1d(temporal_dim, frames)
    spatial = spatial[None].expand(temporal_size, -1, -1)
    temporal = temporal[:, None].expand(-1, rows * cols, -1)
    return torch.cat([temporal, spatial], dim=-1)


def get_3d_rotary_pos_embed(embed_dim: int, crops_coords, grid_size: tuple[int, int], temporal_size: int,
                            theta: int = 10000, use_real: bool = True, grid_type: str = "linspace",
                            max_size: tuple[int, int] | None = None,
                            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``(temporal_size * rows * cols, embed_dim)`` for a ``grid_size = (rows, cols)`` grid.

    ``grid_type="linspace"`` spreads ``rows`` positions over the crop ``crops_coords = ((top, left), (bottom, right))``
    (CogVideoX 1.0); ``"slice"`` takes integer positions (CogVideoX 1.5; ``max_size`` is accepted for the
    reference's signature).
    """
    if use_real is not True:
        raise ValueError("get_3d_rotary_pos_embed returns real (cos, sin) tables only; use_real must be True")
    rows, cols = grid_size
    if grid_type == "linspace":
        (top, left), (bottom, right) = crops_coords
        row = torch.linspace(top, bottom * (rows - 1) / rows, rows, device=device, dtype=torch.float32)
        col = torch.linspace(left, right * (cols - 1) / cols, cols, device=device, dtype=torch.float32)
        frame = torch.linspace(0, temporal_size * (temporal_size - 1) / temporal_size, temporal_size,
                               device=device, dtype=torch.float32)
    elif grid_type == "slice":
        row = torch.arange(rows, device=device, dtype=torch.float32)
        col = torch.arange(cols, device=device, dtype=torch.float32)
        frame = torch.arange(temporal_size, device=device, dtype=torch.float32)
    else:
        raise ValueError(f"grid_type={grid_type!r}; use 'linspace' or 'slice'")
    dim_t, dim_hw = embed_dim // 4, embed_dim // 8 * 3
    tables = [rope_cos_sin(dim_t, frame, theta, torch.float32), rope_cos_sin(dim_hw, row, theta, torch.float32),
              rope_cos_sin(dim_hw, col, theta, torch.float32)]

    def grid(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        shape = (temporal_size, rows, cols)
        joined = torch.cat([t[:, None, None].expand(*shape, -1), h[None, :, None].expand(*shape, -1),
                            w[None, None].expand(*shape, -1)], dim=-1)
        return joined.reshape(temporal_size * rows * cols, -1)

    return grid(*(c for c, _ in tables)), grid(*(s for _, s in tables))


class CogVideoXPatchEmbed(nn.Module):
    """``(text (B, S, text_embed_dim), video (B, F, C, H, W)) -> (B, S + F' * H/p * W/p, embed_dim)``.

    Without ``patch_size_t`` each frame is cut into ``p x p`` patches by a strided convolution; with it,
    ``p_t x p x p`` blocks are flattened and projected by a linear layer (CogVideoX 1.5).  A sin-cos table
    (or the learned one of the 2b image-to-video model) is added when rotary embeddings are not used.
    """

    def __init__(self, patch_size: int = 2, patch_size_t: int | None = None, in_channels: int = 16,
                 embed_dim: int = 1920, text_embed_dim: int = 4096, bias: bool = True, sample_width: int = 90,
                 sample_height: int = 60, sample_frames: int = 49, temporal_compression_ratio: int = 4,
                 max_text_seq_length: int = 226, spatial_interpolation_scale: float = 1.875,
                 temporal_interpolation_scale: float = 1.0, use_positional_embeddings: bool = True,
                 use_learned_positional_embeddings: bool = True):
        super().__init__()
        self.patch_size, self.patch_size_t, self.embed_dim = patch_size, patch_size_t, embed_dim
        self.sample_height, self.sample_width, self.sample_frames = sample_height, sample_width, sample_frames
        self.temporal_compression_ratio = temporal_compression_ratio
        self.max_text_seq_length = max_text_seq_length
        self.spatial_interpolation_scale = spatial_interpolation_scale
        self.temporal_interpolation_scale = temporal_interpolation_scale
        self.use_positional_embeddings = use_positional_embeddings
        self.use_learned_positional_embeddings = use_learned_positional_embeddings
        if patch_size_t is None:
            self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        else:
            self.proj = nn.Linear(in_channels * patch_size * patch_size * patch_size_t, embed_dim)
        self.text_proj = nn.Linear(text_embed_dim, embed_dim)
        if use_positional_embeddings or use_learned_positional_embeddings:
            table = self._positional_table(sample_height, sample_width, sample_frames)
            self.register_buffer("pos_embedding", table, persistent=use_learned_positional_embeddings)

    def _positional_table(self, height: int, width: int, frames: int, device=None) -> torch.Tensor:
        """``(1, max_text_seq_length + patches, D)``: zeros for the text slots, the 3-D table for the video."""
        rows, cols = height // self.patch_size, width // self.patch_size
        latent_frames = (frames - 1) // self.temporal_compression_ratio + 1
        table = get_3d_sincos_pos_embed(self.embed_dim, (cols, rows), latent_frames, self.spatial_interpolation_scale,
                                        self.temporal_interpolation_scale, device=device).flatten(0, 1)
        joint = table.new_zeros(1, self.max_text_seq_length + table.shape[0], self.embed_dim)
        joint[:, self.max_text_seq_length:] = table
        return joint

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        text_embeds = self.text_proj(text_embeds)
        b, f, c, h, w = image_embeds.shape
        p = self.patch_size
        if self.patch_size_t is None:
            video = self.proj(image_embeds.reshape(b * f, c, h, w))
            video = video.view(b, f, *video.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
        else:
            pt = self.patch_size_t
            video = image_embeds.permute(0, 1, 3, 4, 2).reshape(b, f // pt, pt, h // p, p, w // p, p, c)
            video = self.proj(video.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(4, 7).flatten(1, 3))
        embeds = torch.cat([text_embeds, video], dim=1).contiguous()
        if not (self.use_positional_embeddings or self.use_learned_positional_embeddings):
            return embeds
        if self.use_learned_positional_embeddings and (self.sample_width != w or self.sample_height != h):
            raise ValueError(
                f"learned positional embeddings cover {self.sample_height}x{self.sample_width} latents only; "
                f"got {h}x{w} (generate at the model's sample_height/sample_width)")
        frames = (f - 1) * self.temporal_compression_ratio + 1
        if (self.sample_height, self.sample_width, self.sample_frames) != (h, w, frames):
            table = self._positional_table(h, w, frames, device=embeds.device)
        else:
            table = self.pos_embedding
        return embeds + table.to(embeds.dtype)
