"""Activation functions and the projected activations used by transformer feed-forward layers.

The gated variants follow Shazeer, "GLU Variants Improve Transformer" (arXiv:2002.05202):
one linear layer produces both the value and the gate, ``value * act(gate)``.
Module attribute names (``proj``) equal Diffusers' so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def get_activation(act_fn: str) -> nn.Module:
    """A fresh activation module from its name (``silu``/``swish``, ``mish``, ``gelu``, ``relu``)."""
    if not isinstance(act_fn, str) or act_fn.lower() not in _ACTIVATIONS:
        raise ValueError(f"act_fn={act_fn!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[act_fn.lower()]()


class FP32SiLU(nn.Module):
    """SiLU evaluated in float32, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x.float()).to(x.dtype)


class GELU(nn.Module):
    """Linear projection followed by GELU (``approximate="tanh"`` for the tanh form)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Module):
    """GELU-gated linear unit: ``value * gelu(gate)`` from one projection of width ``2 * dim_out``."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return value * F.gelu(gate)


class SwiGLU(nn.Module):
    """SiLU-gated linear unit."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)
        self.activation = nn.SiLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return value * self.activation(gate)


class ApproximateGELU(nn.Module):
    """Projection then the sigmoid approximation ``x * sigmoid(1.702 x)`` (Hendrycks & Gimpel, arXiv:1606.08415)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x * torch.sigmoid(1.702 * x)


class LinearActivation(nn.Module):
    """Projection then a named activation."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True, activation: str = "silu"):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.activation = get_activation(activation)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.proj(hidden_states))


def _projected_activation(name: str, dim: int, inner_dim: int, bias: bool) -> nn.Module:
    builders = {
        "gelu": lambda: GELU(dim, inner_dim, bias=bias),
        "gelu-approximate": lambda: GELU(dim, inner_dim, approximate="tanh", bias=bias),
        "geglu": lambda: GEGLU(dim, inner_dim, bias=bias),
        "geglu-approximate": lambda: ApproximateGELU(dim, inner_dim, bias=bias),
        "swiglu": lambda: SwiGLU(dim, inner_dim, bias=bias),
        "linear-silu": lambda: LinearActivation(dim, inner_dim, bias=bias, activation="silu"),
    }
    if name not in builders:
        raise ValueError(f"activation_fn={name!r} is not supported; use one of {sorted(builders)}")
    return builders[name]()


class FeedForward(nn.Module):
    """Position-wise feed-forward: projected activation, dropout, output projection (``net.0``, ``net.2``).

    Shapes: ``(..., dim) -> (..., dim_out)``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: int = 4,
        dropout: float = 0.0,
        activation_fn: str = "geglu",
        final_dropout: bool = False,
        inner_dim: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        layers = [_projected_activation(activation_fn, dim, inner_dim, bias), nn.Dropout(dropout),
                  nn.Linear(inner_dim, dim_out, bias=bias)]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


def chunked_feed_forward(ff: nn.Module, hidden_states: torch.Tensor, chunk_dim: int, chunk_size: int) -> torch.Tensor:
    """Run ``ff`` on pieces of ``chunk_size`` along ``chunk_dim`` to bound peak memory (same result)."""
    pieces = hidden_states.split(chunk_size, dim=chunk_dim)
    if len(pieces) == 1:
        return ff(hidden_states)
    return torch.cat([ff(piece) for piece in pieces], dim=chunk_dim)
