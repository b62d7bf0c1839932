"""Several T2I-Adapters steering one UNet: their features, weighted, add up (Diffusers' ``MultiAdapter``).

Saved as one folder per adapter, Diffusers' layout: ``<dir>``, ``<dir>_1``, ``<dir>_2``, ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin

from kernel_t2i_adapter.adapter import T2IAdapter


def weighted_sum(features: Sequence[list[torch.Tensor]], weights: Sequence[float]) -> list[torch.Tensor]:
    """``sum_k weights[k] * features[k][i]`` for every level ``i``, in adapter order."""
    total = [weights[0] * f for f in features[0]]
    for more, w in zip(features[1:], weights[1:]):
        total = [t + w * f for t, f in zip(total, more)]
    return total


class MultiAdapter(ModelMixin):
    """A list of :class:`T2IAdapter` (two or more) with the same downscaling; ``forward(xs, adapter_weights)``
    runs adapter ``k`` on ``xs[k]`` and returns the weighted sum of their features (equal weights ``1/n``
    when ``adapter_weights`` is None)."""

    ignore_for_config = ("adapters",)

    @register_to_config
    def __init__(self, adapters: Sequence[T2IAdapter]):
        super().__init__()
        if not isinstance(adapters, (list, tuple)) or len(adapters) < 2:
            raise ValueError("adapters must be a list of two or more T2IAdapter (use the T2IAdapter itself for one), "
                             f"got {adapters!r}")
        bad = [type(a).__name__ for a in adapters if not isinstance(a, T2IAdapter)]
        if bad:
            raise ValueError(f"adapters must all be T2IAdapter, got {bad}")
        first = adapters[0]
        for k, a in enumerate(adapters[1:], start=1):
            if (a.downscale_factor, a.total_downscale_factor) != (first.downscale_factor, first.total_downscale_factor):
                raise ValueError(
                    "adapters must downscale alike so their features add up: adapters[0] has downscale_factor "
                    f"{first.downscale_factor} and total_downscale_factor {first.total_downscale_factor}, "
                    f"adapters[{k}] has {a.downscale_factor} and {a.total_downscale_factor}")
        self.adapters = nn.ModuleList(adapters)

    @property
    def num_adapter(self) -> int:
        return len(self.adapters)

    @property
    def downscale_factor(self) -> int:
        return self.adapters[0].downscale_factor

    @property
    def total_downscale_factor(self) -> int:
        return self.adapters[0].total_downscale_factor

    def forward(self, xs: Sequence[torch.Tensor], adapter_weights: Sequence[float] | None = None) -> list[torch.Tensor]:
        n = len(self.adapters)
        weights = [1.0 / n] * n if adapter_weights is None else [float(w) for w in adapter_weights]
        if len(xs) != n or len(weights) != n:
            raise ValueError(f"xs and adapter_weights need one entry per adapter ({n}); got {len(xs)} and "
                             f"{len(weights)}")
        return weighted_sum([adapter(x) for adapter, x in zip(self.adapters, xs)], weights)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        safe_serialization: bool = True, variant: str | None = None, **kwargs: Any) -> None:
        """Each adapter into its own folder: ``save_directory``, then ``save_directory_1``, ..."""
        base = str(save_directory)
        for i, adapter in enumerate(self.adapters):
            adapter.save_pretrained(base if i == 0 else f"{base}_{i}", is_main_process=is_main_process,
                                    safe_serialization=safe_serialization, variant=variant, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str | os.PathLike, subfolder: str | None = None,
                        **kwargs: Any) -> "MultiAdapter":
        """Load ``path``, ``path_1``, ``path_2``, ... (as many consecutive folders as exist)."""
        base = Path(pretrained_model_path) / subfolder if subfolder else Path(pretrained_model_path)
        adapters, path = [], base
        while path.is_dir():
            adapters.append(T2IAdapter.from_pretrained(path, **kwargs))
            path = base.with_name(f"{base.name}_{len(adapters)}")
        if len(adapters) < 2:
            raise ValueError(f"MultiAdapter loads two or more adapter folders ({base.name}, {base.name}_1, ...); "
                             f"found {len(adapters)} at {base}")
        return cls(adapters)
