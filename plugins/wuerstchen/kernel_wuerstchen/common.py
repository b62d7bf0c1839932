"""What the Würstchen prior and decoder share: the timestep-ratio embedding and the block dispatch.

The blocks themselves are Stable Cascade's (``kernel_stable_cascade.unet_stable_cascade``): Würstchen v2's
residual, timestep and attention blocks are the same math with the same parameter names, Stable Cascade
(Würstchen v3) only adds extra conditioning mappers to the timestep block, which v2 does not use.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernel_layers.blocks_2d import run_checkpointed
from kernel_stable_cascade.unet_stable_cascade import SDCascadeAttnBlock, SDCascadeResBlock, SDCascadeTimestepBlock


def ratio_embedding(r: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal ``[sin, cos]`` embedding ``(B, dim)`` of timestep ratios ``r`` ``(B,)`` scaled by ``max_positions``
    (zero-padded to an odd ``dim``).

    The angles reach ``max_positions`` radians, where float32 rounding of the frequencies shows: they are
    computed as ``exp(i * -(log(max_positions) / (half - 1)))``, the original code's order of operations, so
    checkpoints see the embedding they were trained with (``kernel_layers.get_timestep_embedding`` divides
    last and drifts by ~1e-3 at these angles).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=r.device).float() * -(math.log(max_positions) / (half - 1)))
    angles = (r * max_positions)[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(r.dtype)


def run_block(owner: nn.Module, block: nn.Module, x: torch.Tensor, r_embed: torch.Tensor,
              clip: torch.Tensor | None, skip: torch.Tensor | None = None) -> torch.Tensor:
    """One block with the input it reads: the skip (residual), the ratio embedding (timestep) or the tokens
    (attention); recomputed in the backward pass under gradient checkpointing."""
    if isinstance(block, SDCascadeResBlock):
        return run_checkpointed(block, owner, x, skip)
    if isinstance(block, SDCascadeTimestepBlock):
        return run_checkpointed(block, owner, x, r_embed)
    if isinstance(block, SDCascadeAttnBlock):
        return run_checkpointed(block, owner, x, clip)
    return block(x)
