"""Brownian-tree noise for SDE samplers (as in k-diffusion's ``BrownianTreeNoiseSampler``).

A Brownian motion ``W`` on ``[sigma_min, sigma_max]`` is sampled lazily by ``torchsde``'s
Brownian interval (Kidger et al. 2021, "Efficient and Accurate Gradients for Neural SDEs");
the noise for a step from ``sigma`` to ``sigma_next`` is the normalised increment
``(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)``.  Because the path is fixed by its
seed, the same seed gives consistent noise whatever the step sizes, which keeps SDE samples
stable when the number of steps changes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

try:
    import torchsde
except ImportError as err:  # pragma: no cover - torchsde is a declared dependency
    raise ImportError("the Brownian-tree noise sampler needs torchsde: pip install torchsde") from err


def _ordered(a, b):
    return (a, b, 1.0) if a < b else (b, a, -1.0)


class BatchedBrownianTree:
    """One Brownian interval per batch item when ``seed`` is a list, else one for the whole tensor."""

    def __init__(self, x: torch.Tensor, t0, t1, seed: int | Sequence[int] | None = None, **kwargs):
        t0, t1, self.sign = _ordered(t0, t1)
        w0 = kwargs.get("w0", torch.zeros_like(x))
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.batched = isinstance(seed, (list, tuple))
        if self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError(f"got {len(seed)} seeds for a batch of {x.shape[0]}; give one seed per item")
            w0 = w0[0]
        seeds = list(seed) if self.batched else [seed]
        self.trees = [
            torchsde.BrownianInterval(
                t0=t0, t1=t1, size=w0.shape, dtype=w0.dtype, device=w0.device, entropy=s,
                tol=1e-6, pool_size=24, halfway_tree=True,
            )
            for s in seeds
        ]

    def __call__(self, t0, t1) -> torch.Tensor:
        t0, t1, sign = _ordered(t0, t1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """Unit-variance noise for the step ``sigma -> sigma_next`` from a fixed Brownian path."""

    def __init__(
        self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: int | Sequence[int] | None = None,
        transform: Callable = lambda v: v,
    ):
        self.transform = transform
        t0 = self.transform(torch.as_tensor(sigma_min))
        t1 = self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0 = self.transform(torch.as_tensor(sigma))
        t1 = self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()
