"""Exponential moving average of model weights (Polyak & Juditsky 1992; as used by DDPM, Ho et al. 2020).

The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so early averages are not
dominated by the random initialisation.  The object has ``state_dict``/``load_state_dict`` so
``accelerate`` saves and restores it with the rest of a checkpoint.
"""

from __future__ import annotations

from typing import Iterable

import torch


class EMAModel:
    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float = 0.9999, min_decay: float = 0.0,
                 warmup: bool = True):
        if not 0.0 <= min_decay <= decay <= 1.0:
            raise ValueError(f"need 0 <= min_decay <= decay <= 1, got min_decay={min_decay}, decay={decay}")
        params = list(parameters)
        self.shadow = [p.detach().clone().float() for p in params]
        self.decay, self.min_decay, self.warmup = decay, min_decay, warmup
        self.optimization_step = 0
        self._stored: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        step = self.optimization_step
        value = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        return max(value, self.min_decay)

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        decay = self.current_decay()
        self.optimization_step += 1
        for shadow, param in zip(self.shadow, parameters):
            if param.requires_grad:
                shadow.lerp_(param.detach().float(), 1.0 - decay)
            else:
                shadow.copy_(param.detach())

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow, parameters):
            param.copy_(shadow.to(param.dtype))

    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Keep a copy of the live weights (to evaluate with EMA weights, then :meth:`restore`)."""
        self._stored = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if self._stored is None:
            raise RuntimeError("restore() called without a previous store()")
        for saved, param in zip(self._stored, parameters):
            param.copy_(saved)
        self._stored = None

    def to(self, device=None) -> "EMAModel":
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "min_decay": self.min_decay, "warmup": self.warmup,
                "optimization_step": self.optimization_step, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow):
            raise ValueError(f"EMA state has {len(shadow)} tensors, this model {len(self.shadow)}")
        self.decay, self.min_decay, self.warmup = state["decay"], state["min_decay"], state["warmup"]
        self.optimization_step = int(state["optimization_step"])
        self.shadow = [s.to(o.device).float() for s, o in zip(shadow, self.shadow)]
