"""Batch slicing and overlapping-tile processing for autoencoders.

Tiles of ``in_tile`` pixels start every ``in_tile * (1 - tile_overlap_factor)`` pixels; each is
processed on its own, then every output tile is linearly cross-faded with its upper and left
neighbours over ``out_tile * tile_overlap_factor`` rows/columns and cropped, exactly the way
Diffusers blends VAE tiles (so the two libraries give the same tiled result).
"""

from __future__ import annotations

from typing import Callable

import torch


def _ramp(extent: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.arange(extent, dtype=torch.float64) / extent
    return (1 - w).to(like.dtype).to(like.device), w.to(like.dtype).to(like.device)


def blend_v(a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
    """Fade the bottom rows of ``a`` into the top rows of ``b`` (``b`` is updated in place and returned)."""
    extent = min(a.shape[2], b.shape[2], blend_extent)
    if extent > 0:
        keep, take = _ramp(extent, b)
        b[:, :, :extent, :] = a[:, :, -extent:, :] * keep[:, None] + b[:, :, :extent, :] * take[:, None]
    return b


def blend_h(a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
    """Fade the right columns of ``a`` into the left columns of ``b`` (in place)."""
    extent = min(a.shape[3], b.shape[3], blend_extent)
    if extent > 0:
        keep, take = _ramp(extent, b)
        b[:, :, :, :extent] = a[:, :, :, -extent:] * keep + b[:, :, :, :extent] * take
    return b


class TilingMixin:
    """``enable_slicing`` / ``enable_tiling`` switches and the tile blender."""

    tile_overlap_factor = 0.25

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Process large inputs in overlapping tiles (bounded memory, near-identical result)."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """Process a batch one item at a time (bounded memory, identical result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    blend_v = staticmethod(blend_v)
    blend_h = staticmethod(blend_h)

    def blend_tiles(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], in_tile: int,
                    out_tile: int) -> torch.Tensor:
        """Apply ``fn`` to overlapping ``in_tile`` tiles of ``x`` and blend the ``out_tile`` results."""
        stride = int(in_tile * (1 - self.tile_overlap_factor))
        extent = int(out_tile * self.tile_overlap_factor)
        limit = out_tile - extent
        if stride < 1:
            raise ValueError(f"tile size {in_tile} with tile_overlap_factor={self.tile_overlap_factor} leaves no stride")
        rows = [[fn(x[:, :, i:i + in_tile, j:j + in_tile]) for j in range(0, x.shape[3], stride)]
                for i in range(0, x.shape[2], stride)]
        out_rows = []
        for i, row in enumerate(rows):
            pieces = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = blend_v(rows[i - 1][j], tile, extent)
                if j > 0:
                    tile = blend_h(row[j - 1], tile, extent)
                pieces.append(tile[:, :, :limit, :limit])
            out_rows.append(torch.cat(pieces, dim=3))
        return torch.cat(out_rows, dim=2)
