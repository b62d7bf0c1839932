"""What every scheduler shares with the kernel: the base class, the step outputs and the noise draw.

The schedule math (beta and sigma schedules, timestep spacings, thresholding, step-index
bookkeeping) is not kernel code: it lives in the ``kernel-sched-common`` plugin
(:mod:`kernel_sched_common`), which the scheduler plugins depend on.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from kernel.config import ConfigMixin
from kernel.outputs import BaseOutput


@dataclasses.dataclass
class SchedulerOutput(BaseOutput):
    """Result of ``Scheduler.step``.

    prev_sample: the sample at the next (less noisy) timestep, same shape and dtype as the input sample.
    """

    prev_sample: torch.Tensor


@dataclasses.dataclass
class SchedulerOutputWithX0(BaseOutput):
    """``step`` output of schedulers that also report the predicted clean sample."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SchedulerMixin(ConfigMixin):
    """Base class of every scheduler: config handling plus ``compatibles``.

    Subclasses list the Diffusers class names they can be swapped with in ``_compatibles``.
    """

    component_kind = "scheduler"
    config_name = "scheduler_config.json"
    _compatibles: tuple[str, ...] = ()
    order: int = 1

    @property
    def compatibles(self) -> list[type]:
        """The installed scheduler classes that can be built from this one's config."""
        from kernel.registry import get_registry

        registry = get_registry()
        names = [type(self).__name__, *self._compatibles]
        out = []
        for name in dict.fromkeys(names):
            if registry.has(name):
                try:
                    out.append(registry.resolve(name))
                except Exception:  # a broken plugin was already reported by the registry
                    continue
        return out

    def _require_timesteps(self) -> None:
        if getattr(self, "num_inference_steps", None) is None:
            raise RuntimeError(
                f"{type(self).__name__}.step was called before set_timesteps; "
                "call scheduler.set_timesteps(num_inference_steps) first"
            )

    def __len__(self) -> int:
        return self.config.num_train_timesteps


# ---------------------------------------------------------------------------- noise
def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device, then moved; one generator per item for a list.

    Drawing on the generator's device (CPU generators are the common case) makes the same seed give
    the same noise whatever device the model runs on, which is also what Diffusers does.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        else:
            if len(generator) != shape[0]:
                raise ValueError(
                    f"a list of {len(generator)} generators was given for a batch of {shape[0]}; "
                    "give one generator per item"
                )
            items = [randn_tensor((1, *shape[1:]), g, device, dtype) for g in generator]
            return torch.cat(items, dim=0)
    gen_device = generator.device if generator is not None else device
    if gen_device.type != device.type and gen_device.type == "cpu":
        return torch.randn(tuple(shape), generator=generator, device="cpu", dtype=dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
