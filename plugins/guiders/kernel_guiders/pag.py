"""Perturbed-Attention Guidance (Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance", arXiv:2403.17377).

One extra positive-prompt evaluation runs with chosen self-attention layers made "identity": every
token attends only to itself, so the layer returns the output projection of its values.  The guided
prediction moves away from that degraded one:
``pred = cfg + pag_scale * (cond - cond_perturbed)``, with an optional decay over time
(``pag_adaptive_scale``: ``max(pag_scale - pag_adaptive_scale * (1000 - t), 0)``).

Layers are chosen as Diffusers' PAG pipelines choose them: each entry of ``pag_applied_layers`` is a
regular expression searched in the names of the denoiser's self-attention modules (``"mid"``,
``"down_blocks.2"``, ``"blocks.1"``), where a trailing number must not match a different number
(``"blocks.1"`` does not select ``...blocks.1.attn.0``-style numeric leaves).  In joint text-image
attention (SD3) the image tokens attend to themselves and to the text, as in the reference.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from typing import Any, Iterator, Mapping, Sequence

import torch

from kernel.config import register_to_config
from kernel.guidance import POSITIVE, GuidancePass, GuidanceStep, check_scale, check_window

from kernel_guiders.cfg import COND, ClassifierFreeGuidance

PERTURBED = "pred_cond_perturbed"


# ---------------------------------------------------------------------------- attention
class PerturbedAttnProcessor:
    """Identity self-attention around a layer's own processor (which joint attention still uses)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs: Any):
        if encoder_hidden_states is not None and getattr(attn, "add_q_proj", None) is not None:
            return self._joint(attn, hidden_states, encoder_hidden_states, temb, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
        if len(shape) == 4:
            hidden_states = hidden_states.transpose(1, 2).reshape(shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _joint(self, attn, hidden_states, encoder_hidden_states, temb, **kwargs):
        layout = getattr(self.inner, "joint_layout", None)
        if layout != "image_text":
            raise ValueError(f"perturbed-attention guidance needs to know the token layout of "
                             f"{type(self.inner).__name__} (joint_layout='image_text'); this denoiser is not supported")
        n_image, n_text = hidden_states.shape[1], encoder_hidden_states.shape[1]
        total = n_image + n_text
        mask = torch.zeros(total, total, device=hidden_states.device, dtype=hidden_states.dtype)
        mask[:n_image, :n_image] = float("-inf")
        mask[:n_image, :n_image].fill_diagonal_(0)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask=mask[None, None], **kwargs)


def _is_self_attention(module: Any) -> bool:
    return hasattr(module, "set_processor") and hasattr(module, "to_v") and \
        getattr(module, "is_cross_attention", True) is False


def _numeric_mismatch(layer_id: str, name: str) -> bool:
    # "blocks.1" must not pick a module whose own last name part is a different number.
    a, b = layer_id.split(".")[-1], name.split(".")[-1]
    return a.isnumeric() and b.isnumeric() and a == b


def select_self_attention(model: torch.nn.Module, layers: Sequence[str]) -> list[torch.nn.Module]:
    """The self-attention modules of ``model`` that ``layers`` (regular expressions) name."""
    chosen: dict[int, torch.nn.Module] = {}
    for layer_id in layers:
        found = [m for name, m in model.named_modules()
                 if _is_self_attention(m) and re.search(layer_id, name) and not _numeric_mismatch(layer_id, name)]
        if not found:
            raise ValueError(f"pag_applied_layers entry {layer_id!r} matches no self-attention layer of "
                             f"{type(model).__name__}; give a name part such as 'mid', 'down_blocks.1' or 'blocks.0'")
        chosen.update((id(m), m) for m in found)
    return list(chosen.values())


@contextlib.contextmanager
def perturbed_attention(model: torch.nn.Module, layers: Sequence[str]) -> Iterator[None]:
    """Within the block, the chosen self-attention layers of ``model`` are identity attention."""
    modules = select_self_attention(model, layers)
    saved = [m.processor for m in modules]
    try:
        for m in modules:
            m.set_processor(PerturbedAttnProcessor(m.processor))
        yield
    finally:
        for m, p in zip(modules, saved):
            m.set_processor(p)


def _as_layers(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"pag_applied_layers must be a layer name or a non-empty list of layer names "
                         f"(e.g. 'mid', ['down_blocks.2', 'up']), got {value!r}")
    return list(value)


# ---------------------------------------------------------------------------- guider
class PerturbedAttentionGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance plus a perturbed-attention term (the PAG pipelines' arithmetic).

    ``perturbed_guidance_layers`` are the PAG pipelines' ``pag_applied_layers``; the perturbed term
    applies in the ``[perturbed_guidance_start, perturbed_guidance_stop)`` fraction of the steps.
    """

    neutral_config = {"guidance_scale": 1.0, "perturbed_guidance_scale": 0.0}

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, perturbed_guidance_scale: float = 3.0,
                 perturbed_guidance_start: float = 0.0, perturbed_guidance_stop: float = 1.0,
                 perturbed_guidance_layers: str | list[str] = "mid", perturbed_guidance_adaptive_scale: float = 0.0,
                 guidance_rescale: float = 0.0, use_original_formulation: bool = False, start: float = 0.0,
                 stop: float = 1.0, enabled: bool = True):
        super().__init__(guidance_scale, guidance_rescale, use_original_formulation, start, stop, enabled)
        check_scale("pag_scale", perturbed_guidance_scale)
        check_scale("pag_adaptive_scale", perturbed_guidance_adaptive_scale)
        check_window(perturbed_guidance_start, perturbed_guidance_stop, "perturbed_guidance")
        self.pag_scale = perturbed_guidance_scale
        self.pag_adaptive_scale = perturbed_guidance_adaptive_scale
        self.pag_start, self.pag_stop = perturbed_guidance_start, perturbed_guidance_stop
        self.layers = _as_layers(perturbed_guidance_layers)

    def _perturb(self, model):
        return perturbed_attention(model, self.layers)

    def passes(self, step: GuidanceStep) -> list[GuidancePass]:
        passes = self._cfg_passes(step)
        if self.pag_scale > 0 and step.within(self.pag_start, self.pag_stop):
            passes.append(GuidancePass(PERTURBED, POSITIVE, context=self._perturb))
        return passes

    def _scale_at(self, timestep: Any) -> Any:
        if self.pag_adaptive_scale > 0:
            # clamp instead of a Python comparison keeps the loop free of host syncs
            return (self.pag_scale - self.pag_adaptive_scale * (1000 - timestep)).clamp(min=0)
        return self.pag_scale

    def combine(self, predictions: Mapping[str, torch.Tensor], step: GuidanceStep) -> torch.Tensor:
        pred = self._cfg(predictions)
        if PERTURBED in predictions:
            cond = predictions[COND]
            pred = pred + self._scale_at(step.timestep) * (cond - predictions[PERTURBED])
        return self._rescale(pred, predictions)


# ---------------------------------------------------------------------------- pipelines
def _extended(impl, base, extra: list[inspect.Parameter]):
    """``impl`` presented with ``base``'s signature plus ``extra`` keyword parameters."""
    def method(self, *args: Any, **kwargs: Any):
        return impl(self, base, *args, **kwargs)

    sig = inspect.signature(base)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    tail = [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
    method.__signature__ = sig.replace(parameters=params + extra + tail)
    method.__doc__ = base.__doc__
    method.__name__ = base.__name__
    return method


def _keyword(name: str, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)


class PAGMixin:
    """Turns a family pipeline into its PAG variant (Diffusers' ``...PAGPipeline`` classes).

    The subclass lists the family class after this mixin and sets ``_pag_default_layers``; it gains
    the constructor argument ``pag_applied_layers`` (kept in ``model_index.json``) and the call
    arguments ``pag_scale`` (default 3.0) and ``pag_adaptive_scale`` (default 0.0), which replace the
    family's classifier-free guider with :class:`PerturbedAttentionGuidance`.  ``pag_scale=0`` gives
    the family pipeline's output exactly.
    """

    _pag_default_layers: str | list[str] = "mid"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        family = next(b for b in cls.__mro__[1:] if not issubclass(b, PAGMixin))
        cls.__init__ = _extended(PAGMixin._pag_init, family.__init__,
                                 [_keyword("pag_applied_layers", cls._pag_default_layers)])
        cls.__call__ = _extended(PAGMixin._pag_call, family.__call__,
                                 [_keyword("pag_scale", 3.0), _keyword("pag_adaptive_scale", 0.0)])

    def _pag_init(self, base, *args: Any, pag_applied_layers: Any = None, **kwargs: Any) -> None:
        base(self, *args, **kwargs)
        self.set_pag_applied_layers(self._pag_default_layers if pag_applied_layers is None else pag_applied_layers)

    def _pag_call(self, base, *args: Any, pag_scale: float = 3.0, pag_adaptive_scale: float = 0.0, **kwargs: Any):
        check_scale("pag_scale", pag_scale)
        check_scale("pag_adaptive_scale", pag_adaptive_scale)
        self._pag_scale, self._pag_adaptive_scale = pag_scale, pag_adaptive_scale
        return base(self, *args, **kwargs)

    def set_pag_applied_layers(self, pag_applied_layers: str | list[str]) -> None:
        """Which self-attention layers the perturbed evaluation changes (see the module docstring)."""
        self.register_to_config(pag_applied_layers=_as_layers(pag_applied_layers))

    @property
    def pag_applied_layers(self) -> list[str]:
        return list(self.config.pag_applied_layers)

    @property
    def pag_scale(self) -> float:
        return self._pag_scale

    @property
    def pag_adaptive_scale(self) -> float:
        return self._pag_adaptive_scale

    @property
    def do_perturbed_attention_guidance(self) -> bool:
        return self._pag_scale > 0

    @property
    def do_pag_adaptive_scaling(self) -> bool:
        return self._pag_adaptive_scale > 0 and self._pag_scale > 0

    def _default_guider(self, call: Any):
        cfg = super()._default_guider(call)
        return PerturbedAttentionGuidance(
            guidance_scale=cfg.guidance_scale, guidance_rescale=cfg.guidance_rescale,
            perturbed_guidance_scale=self._pag_scale, perturbed_guidance_adaptive_scale=self._pag_adaptive_scale,
            perturbed_guidance_layers=self.pag_applied_layers)
