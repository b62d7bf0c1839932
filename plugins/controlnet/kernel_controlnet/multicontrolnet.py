"""Several ControlNets driving one denoiser: their residuals are summed (Diffusers' ``MultiControlNetModel``,
``MultiControlNetUnionModel``, ``SD3MultiControlNetModel``, ``FluxMultiControlNetModel``).  :class:`NetList` is
what they share: the list of nets, its checks, and files.

Saved as one folder per net, Diffusers' ``MultiControlNetModel`` layout: ``<dir>``, ``<dir>_1``, ``<dir>_2``, ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin

from kernel_controlnet.controlnet import ControlNetModel
from kernel_controlnet.controlnet_union import ControlNetUnionModel


def sum_residuals(outputs: Sequence[tuple[list[torch.Tensor], torch.Tensor]]):
    """``(down, mid)`` residuals of several nets added up, in order."""
    down, mid = outputs[0]
    for more_down, more_mid in outputs[1:]:
        down = [a + b for a, b in zip(down, more_down)]
        mid = mid + more_mid
    return down, mid


def add_samples(total: list[torch.Tensor] | None, more: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """Residual lists of two transformer ControlNets added element-wise; a missing list (None) leaves ``total``
    as it is (Diffusers' rule for nets without blocks of one kind)."""
    if total is None or more is None:
        return total
    return [a + b for a, b in zip(total, more)]


class NetList(ModelMixin):
    """A non-empty list of ControlNets of one class (``_net_class``), kept in ``nets``."""

    _net_class: type = ControlNetModel
    ignore_for_config = ("controlnets",)

    @register_to_config
    def __init__(self, controlnets: Sequence[nn.Module]):
        super().__init__()
        name = self._net_class.__name__
        if not isinstance(controlnets, (list, tuple)) or not controlnets:
            raise ValueError(f"controlnets must be a non-empty list of {name}, got {controlnets!r}")
        bad = [type(c).__name__ for c in controlnets if not isinstance(c, self._net_class)]
        if bad:
            raise ValueError(f"controlnets must all be {name}, got {bad}")
        self.nets = nn.ModuleList(controlnets)

    def _check_per_net(self, **values: Sequence) -> None:
        n = len(self.nets)
        wrong = {k: len(v) for k, v in values.items() if len(v) != n}
        if wrong:
            raise ValueError(f"{', '.join(values)} need one entry per net ({n}); got "
                             + ", ".join(f"{k}: {v}" for k, v in wrong.items()))

    # ------------------------------------------------------------------ files
    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        safe_serialization: bool = True, variant: str | None = None, **kwargs: Any) -> None:
        """Each net into its own folder: ``save_directory``, then ``save_directory_1``, ..."""
        base = str(save_directory)
        for i, net in enumerate(self.nets):
            net.save_pretrained(base if i == 0 else f"{base}_{i}", is_main_process=is_main_process,
                                safe_serialization=safe_serialization, variant=variant, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str | os.PathLike, subfolder: str | None = None,
                        **kwargs: Any):
        """Load ``path``, ``path_1``, ``path_2``, ... (as many consecutive folders as exist)."""
        base = Path(pretrained_model_path) / subfolder if subfolder else Path(pretrained_model_path)
        nets, path = [], base
        while path.is_dir():
            nets.append(cls._net_class.from_pretrained(path, **kwargs))
            path = base.with_name(f"{base.name}_{len(nets)}")
        if not nets:
            raise ValueError(f"no ControlNet folder at {base} ({cls.__name__} loads {base.name}, "
                             f"{base.name}_1, ...)")
        return cls(nets)


class MultiControlNetModel(NetList):
    """A list of :class:`ControlNetModel` whose residuals add up; ``forward`` takes one control image and
    one ``conditioning_scale`` per net and returns ``(down_block_res_samples, mid_block_res_sample)``."""

    _net_class = ControlNetModel

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Sequence[torch.Tensor],
        conditioning_scale: Sequence[float],
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ):
        self._check_per_net(controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale)
        outputs = [net(sample, timestep, encoder_hidden_states, image, scale, class_labels=class_labels,
                       timestep_cond=timestep_cond, attention_mask=attention_mask,
                       added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                       guess_mode=guess_mode, return_dict=False)
                   for net, image, scale in zip(self.nets, controlnet_cond, conditioning_scale)]
        # Like the reference, a tuple whatever return_dict says.
        return sum_residuals(outputs)


class MultiControlNetUnionModel(NetList):
    """A list of :class:`~kernel_controlnet.controlnet_union.ControlNetUnionModel` whose residuals add up; each
    net takes its own list of control images and modes and one scale for its residuals (a net whose scale is 0
    is skipped), as Diffusers' ``MultiControlNetUnionModel``."""

    _net_class = ControlNetUnionModel

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Sequence[Sequence[torch.Tensor]],
        control_type: Sequence[torch.Tensor],
        control_type_idx: Sequence[Sequence[int]],
        conditioning_scale: Sequence[float],
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ):
        self._check_per_net(controlnet_cond=controlnet_cond, control_type=control_type,
                            control_type_idx=control_type_idx, conditioning_scale=conditioning_scale)
        outputs = [net(sample, timestep, encoder_hidden_states, images, kind, modes, scale, class_labels=class_labels,
                       timestep_cond=timestep_cond, attention_mask=attention_mask,
                       added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                       from_multi=True, guess_mode=guess_mode, return_dict=False)
                   for net, images, kind, modes, scale in zip(self.nets, controlnet_cond, control_type,
                                                              control_type_idx, conditioning_scale)
                   if scale != 0]
        # Like the reference, a tuple whatever return_dict says; (None, None) when every net is off.
        return sum_residuals(outputs) if outputs else (None, None)
