"""Input embeddings of diffusion transformers (DiT, MMDiT, PixArt).

* Patchification with fixed 2-D sin-cos position embeddings (ViT, Dosovitskiy et al.,
  arXiv:2010.11929; DiT, Peebles & Xie, arXiv:2212.09748).  SD3 (Esser et al.,
  arXiv:2403.03206) stores one large table and crops the centre for each latent size;
  PixArt (Chen et al., arXiv:2310.00426) recomputes it for the requested grid.
* Conditioning vectors: timestep + pooled text projection for MMDiT (SD3, Flux-schnell), and the
  pieces the families build theirs from (:func:`time_features`, :class:`PixArtAlphaTextProjection`;
  Flux-dev's guidance embedding lives in ``kernel_flux``, PixArt's size embedding in ``kernel_pixart``).

The position table must equal the reference bit for bit where it is not stored in the
checkpoint (PixArt), so its exact layout is spelled out in :func:`get_2d_sincos_pos_embed`.
"""

from __future__ import annotations

import torch
from torch import nn

from kernel_layers.activations import FP32SiLU
from kernel_layers.embeddings import TimestepEmbedding, Timesteps


# ----------------------------------------------------------------------------- sin-cos tables
def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 10000 ** (-k / (D/2))``: ``(M,) -> (M, D)`` in float64."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a sin-cos embedding, got {embed_dim}")
    half = embed_dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angles = positions.reshape(-1).to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def get_2d_sincos_pos_embed(
    embed_dim: int,
    grid_size: int | tuple[int, int],
    base_size: int = 16,
    interpolation_scale: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """2-D sin-cos position table for a ``(rows, cols)`` patch grid: ``(rows * cols, embed_dim)``, float64.

    Coordinates are rescaled so a grid of ``base_size`` spans ``[0, base_size)`` whatever its
    length, then divided by ``interpolation_scale``.  Token ``(i, j)`` (row-major) gets
    ``[sincos(col_j), sincos(row_i)]``: the column coordinate fills the first half of the
    channels, the row coordinate the second (the reference's layout).
    """
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a 2-D sin-cos embedding, got {embed_dim}")
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    row_pos = torch.arange(rows, dtype=torch.float32, device=device) / (rows / base_size) / interpolation_scale
    col_pos = torch.arange(cols, dtype=torch.float32, device=device) / (cols / base_size) / interpolation_scale
    col_grid = col_pos[None, :].expand(rows, cols)
    row_grid = row_pos[:, None].expand(rows, cols)
    return torch.cat([sincos_1d(embed_dim // 2, col_grid), sincos_1d(embed_dim // 2, row_grid)], dim=1)


# ----------------------------------------------------------------------------- patches
class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` latents -> ``(B, (H/p) * (W/p), embed_dim)`` patch tokens plus positions.

    With ``pos_embed_max_size`` (SD3) the table covers a ``max x max`` grid, is saved with the
    weights, and the centred ``(H/p, W/p)`` window is used.  Without it (PixArt) the table for
    the ``height x width`` training grid is a non-persistent buffer, recomputed for other grids.
    """

    def __init__(
        self,
        height: int = 224,
        width: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        layer_norm: bool = False,
        flatten: bool = True,
        bias: bool = True,
        interpolation_scale: float = 1,
        pos_embed_type: str | None = "sincos",
        pos_embed_max_size: int | None = None,
    ):
        super().__init__()
        if pos_embed_type not in (None, "sincos"):
            raise ValueError(f"pos_embed_type={pos_embed_type!r} is not supported; use 'sincos' or None")
        self.patch_size = patch_size
        self.flatten = flatten
        self.layer_norm = layer_norm
        self.pos_embed_max_size = pos_embed_max_size
        self.height, self.width = height // patch_size, width // patch_size
        self.base_size = height // patch_size
        self.interpolation_scale = interpolation_scale
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=(patch_size, patch_size), stride=patch_size, bias=bias)
        self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False, eps=1e-6) if layer_norm else None
        if pos_embed_type is None:
            self.pos_embed = None
            return
        side = pos_embed_max_size or int((self.height * self.width) ** 0.5)
        table = get_2d_sincos_pos_embed(embed_dim, side, base_size=self.base_size,
                                        interpolation_scale=interpolation_scale)
        self.register_buffer("pos_embed", table.float().unsqueeze(0), persistent=bool(pos_embed_max_size))

    def cropped_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """The centred ``(height/p) x (width/p)`` window of the stored table: ``(1, N, D)``."""
        if self.pos_embed_max_size is None:
            raise ValueError("cropped_pos_embed needs pos_embed_max_size (the stored table's side)")
        rows, cols = height // self.patch_size, width // self.patch_size
        limit = self.pos_embed_max_size
        if rows > limit or cols > limit:
            raise ValueError(
                f"a latent of {height}x{width} gives a {rows}x{cols} patch grid, larger than the "
                f"{limit}x{limit} position table (pos_embed_max_size={limit}); use a smaller size"
            )
        top, left = (limit - rows) // 2, (limit - cols) // 2
        table = self.pos_embed.reshape(1, limit, limit, -1)[:, top:top + rows, left:left + cols, :]
        return table.reshape(1, rows * cols, -1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        height, width = latent.shape[-2:]
        tokens = self.proj(latent)
        if self.flatten:
            tokens = tokens.flatten(2).transpose(1, 2)
        if self.norm is not None:
            tokens = self.norm(tokens)
        if self.pos_embed is None:
            return tokens
        if self.pos_embed_max_size:
            pos = self.cropped_pos_embed(height, width)
        else:
            rows, cols = height // self.patch_size, width // self.patch_size
            if (rows, cols) != (self.height, self.width):
                pos = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], (rows, cols), base_size=self.base_size,
                                              interpolation_scale=self.interpolation_scale,
                                              device=latent.device).float().unsqueeze(0)
            else:
                pos = self.pos_embed
        return (tokens + pos).to(tokens.dtype)


# ----------------------------------------------------------------------------- conditioning vectors
class PixArtAlphaTextProjection(nn.Module):
    """Two-layer MLP projecting caption (or pooled text) embeddings: ``linear_1 -> act -> linear_2``."""

    _ACTS = {"gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU, "silu_fp32": FP32SiLU}

    def __init__(self, in_features: int, hidden_size: int, out_features: int | None = None, act_fn: str = "gelu_tanh"):
        super().__init__()
        if act_fn not in self._ACTS:
            raise ValueError(f"act_fn={act_fn!r} is not supported; use one of {sorted(self._ACTS)}")
        self.linear_1 = nn.Linear(in_features, hidden_size, bias=True)
        self.act_1 = self._ACTS[act_fn]()
        self.linear_2 = nn.Linear(hidden_size, out_features or hidden_size, bias=True)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(caption)))


def time_features() -> Timesteps:
    """256 sinusoidal channels, cos first, no frequency shift: the MMDiT / PixArt timestep features."""
    return Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)


class CombinedTimestepTextProjEmbeddings(nn.Module):
    """MMDiT conditioning vector: ``MLP(sinusoid(t)) + MLP(pooled text)`` (SD3, Flux-schnell)."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int):
        super().__init__()
        self.time_proj = time_features()
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)
        self.text_embedder = PixArtAlphaTextProjection(pooled_projection_dim, embedding_dim, act_fn="silu")

    def forward(self, timestep: torch.Tensor, pooled_projection: torch.Tensor) -> torch.Tensor:
        t = self.timestep_embedder(self.time_proj(timestep).to(dtype=pooled_projection.dtype))
        return t + self.text_embedder(pooled_projection)
