"""Guidance as a component: what a guider is told and what it answers.

A guider (:class:`kernel.protocols.Guider`) decides, step by step, which denoiser evaluations the
step needs (:class:`GuidancePass`) and how their predictions combine into one.  The denoising loop
(:mod:`kernel.engine`) evaluates the passes, batching those that share options, and hands the
predictions back by name.  Classifier-free guidance is two passes (negative and positive prompt);
perturbed-attention guidance adds a third with some self-attention layers replaced; skip-layer
guidance one with some blocks skipped.  Concrete guiders live in plugins (``kernel-guiders``) and
are registered under the ``kernel.components`` entry-point group like every other component.

Writing a guider: subclass :class:`BaseGuidance`, decorate ``__init__`` with
:func:`kernel.config.register_to_config`, implement :meth:`~BaseGuidance.passes` and
:meth:`~BaseGuidance.combine`, and declare ``uses_negative``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping

from kernel.config import ConfigMixin

POSITIVE = "positive"
NEGATIVE = "negative"


@dataclass(frozen=True)
class GuidanceStep:
    """Where the loop is: iteration ``index`` of ``num_steps`` at ``timestep``.

    ``num_steps`` counts loop iterations (denoiser evaluations rounds), which for second-order
    schedulers (Heun, KDPM2) is about twice ``num_inference_steps``, so windows cover the same
    part of the trajectory whatever the scheduler.

    ``has_negative`` is False when no negative conditioning exists (no negative prompt was encoded,
    or a step-end callback dropped it); guiders must then ask for positive passes only.
    """

    index: int
    num_steps: int
    timestep: Any
    has_negative: bool = True

    def within(self, start: float, stop: float) -> bool:
        """Whether this step lies in the ``[start, stop)`` fraction of the steps (Diffusers' window rule)."""
        return int(start * self.num_steps) <= self.index < int(stop * self.num_steps)


@dataclass(frozen=True)
class GuidancePass:
    """One denoiser evaluation a guider asks for.

    ``conditioning`` is ``"positive"`` or ``"negative"`` (which prompt's tensors it takes);
    ``options`` are extra keyword arguments for the denoiser call (``skip_layers=...``);
    ``context``, when set, is called with the denoiser module and gives a context manager the
    evaluation runs inside (perturbed attention swaps processors there).  Passes with equal
    ``options`` and ``context`` run as one batch when the guider allows batching.
    """

    name: str
    conditioning: str = POSITIVE
    options: Mapping[str, Any] = field(default_factory=dict)
    context: Callable[[Any], ContextManager] | None = None

    def group_key(self) -> tuple:
        return (repr(sorted(self.options.items())), self.context)


class BaseGuidance(ConfigMixin):
    """Base of every guider: config file handling and the window helper.

    Subclasses set ``uses_negative`` (property or attribute), and implement ``passes`` and
    ``combine``.  ``batched`` tells the loop whether passes with the same options may share one
    denoiser call (False runs each pass alone, as Flux's true CFG does).
    """

    config_name = "guider_config.json"
    component_kind = "guider"
    batched = True

    @property
    def uses_negative(self) -> bool:  # pragma: no cover - every guider overrides it
        raise NotImplementedError

    def passes(self, step: GuidanceStep) -> list[GuidancePass]:  # pragma: no cover
        raise NotImplementedError

    def combine(self, predictions: Mapping[str, Any], step: GuidanceStep) -> Any:  # pragma: no cover
        raise NotImplementedError

    def reset(self) -> None:
        """Forget per-call state (momentum buffers); the loop calls it before the first step."""


def check_scale(name: str, value: Any, minimum: float | None = 0.0) -> None:
    """A guidance scale is a finite real number (not NaN or inf), at least ``minimum`` when given."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_window(start: Any, stop: Any, what: str = "guidance") -> None:
    """``start``/``stop`` are fractions with ``0 <= start <= stop <= 1``."""
    for name, value in (("start", start), ("stop", stop)):
        check_scale(f"{what} {name}", value)
        if value > 1:
            raise ValueError(f"{what} {name} must be a fraction in [0, 1], got {value!r}")
    if start > stop:
        raise ValueError(f"{what} start ({start}) must not be after stop ({stop})")
