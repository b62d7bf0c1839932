"""The AUTOMATIC1111 sampler names, each mapped to a configured scheduler.

The mapping follows Diffusers' documented A1111/k-diffusion equivalence table (the
"Schedulers" overview page): Karras variants set ``use_karras_sigmas=True``, the SDE variants
of DPM++ 2M set ``algorithm_type="sde-dpmsolver++"``, and so on.  Names Diffusers has no class
for (DPM++ 2S a, DPM++ 3M SDE, DPM fast, DPM adaptive) use this plugin's schedulers.

Classes named after Diffusers are resolved by name through :func:`kernel.component` when a
factory is called, so whichever installed plugin provides ``"EulerDiscreteScheduler"`` is used
and importing this module imports no scheduler code.

Each factory pins the options that distinguish its sampler (for instance ``"DPM++ 2M"`` sets
``use_karras_sigmas=False`` and ``algorithm_type="dpmsolver++"``), so switching samplers from
another scheduler's config never inherits a Karras or SDE flag by accident.  Without a config
the factories start from Stable Diffusion 1.x's scheduler config, the models A1111 serves.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping

#: Stable Diffusion 1.x's ``scheduler_config.json`` (the base when a factory gets no config).
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}

_PLAIN = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_KARRAS = {"use_karras_sigmas": True, "use_exponential_sigmas": False, "use_beta_sigmas": False}

#: This plugin's own scheduler classes (the samplers Diffusers lacks).
LOCAL_CLASSES = {
    "DPMPP2SAncestralScheduler": "kernel_samplers_a1111.dpmpp_2s_ancestral",
    "DPMPP3MSDEScheduler": "kernel_samplers_a1111.dpmpp_3m_sde",
    "DPMFastScheduler": "kernel_samplers_a1111.dpm_solver",
    "DPMAdaptiveScheduler": "kernel_samplers_a1111.dpm_solver",
}


class UnknownSamplerError(KeyError, ValueError):
    """No sampler has the requested name (a ``ValueError`` for callers, a ``KeyError`` for dict users)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class SamplerFactory:
    """Builds the scheduler behind one A1111 sampler name: ``factory(config=None) -> scheduler``."""

    display_name: str
    class_name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolve(self) -> type:
        """The scheduler class (looked up by name at call time)."""
        if self.class_name in LOCAL_CLASSES:
            import importlib

            return getattr(importlib.import_module(LOCAL_CLASSES[self.class_name]), self.class_name)
        import kernel

        return kernel.component(self.class_name)

    def __call__(self, config: Any = None, **overrides: Any) -> Any:
        base = _as_config(config)
        return self.resolve().from_config(base, **{**self.options, **overrides})

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"<sampler {self.display_name!r}: {self.class_name}({opts})>"


def _as_config(config: Any) -> dict[str, Any]:
    if config is None:
        return dict(SD_SCHEDULER_CONFIG)
    if not isinstance(config, Mapping) and hasattr(config, "config"):
        config = config.config
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a dict, a scheduler config or a scheduler, got {type(config).__name__}"
        )
    return dict(config)


class SamplerCatalogue(dict):
    """``{display name: factory}`` with case-insensitive lookup and close-match errors."""

    def _key(self, name: str) -> str | None:
        if not isinstance(name, str):
            raise TypeError(f"sampler name must be a string, got {type(name).__name__}")
        wanted = " ".join(name.split()).lower()
        for key in dict.keys(self):
            if key.lower() == wanted:
                return key
        return None

    def __missing__(self, name: str) -> SamplerFactory:
        key = self._key(name)
        if key is not None:
            return dict.__getitem__(self, key)
        close = difflib.get_close_matches(str(name).lower(), [k.lower() for k in self], n=3, cutoff=0.5)
        lookup = {k.lower(): k for k in self}
        hint = f" Close matches: {', '.join(lookup[c] for c in close)}." if close else ""
        raise UnknownSamplerError(f"unknown sampler {name!r}; accepted names: {', '.join(self)}.{hint}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) is not None

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def build(self, name: str, config: Any = None, **overrides: Any) -> Any:
        """The scheduler for sampler ``name`` (case-insensitive) built from ``config``."""
        return self[name](config, **overrides)


def _catalogue() -> SamplerCatalogue:
    entries: list[tuple[str, str, dict[str, Any]]] = [
        ("Euler", "EulerDiscreteScheduler", _PLAIN),
        ("Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("LMS", "LMSDiscreteScheduler", _PLAIN),
        ("LMS Karras", "LMSDiscreteScheduler", _KARRAS),
        ("Heun", "HeunDiscreteScheduler", _PLAIN),
        ("DPM2", "KDPM2DiscreteScheduler", _PLAIN),
        ("DPM2 a", "KDPM2AncestralDiscreteScheduler", _PLAIN),
        ("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS),
        ("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS),
        ("DPM++ 2S a", "DPMPP2SAncestralScheduler", _PLAIN),
        ("DPM++ 2S a Karras", "DPMPP2SAncestralScheduler", _KARRAS),
        ("DPM++ 2M", "DPMSolverMultistepScheduler", {**_PLAIN, "algorithm_type": "dpmsolver++"}),
        ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_KARRAS, "algorithm_type": "dpmsolver++"}),
        ("DPM++ SDE", "DPMSolverSinglestepScheduler", _PLAIN),
        ("DPM++ SDE Karras", "DPMSolverSinglestepScheduler", _KARRAS),
        ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {**_PLAIN, "algorithm_type": "sde-dpmsolver++"}),
        ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_KARRAS, "algorithm_type": "sde-dpmsolver++"}),
        ("DPM++ 3M SDE", "DPMPP3MSDEScheduler", _PLAIN),
        ("DPM fast", "DPMFastScheduler", {}),
        ("DPM adaptive", "DPMAdaptiveScheduler", {}),
        ("DDIM", "DDIMScheduler", {}),
        ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
        ("UniPC", "UniPCMultistepScheduler", _PLAIN),
        ("LCM", "LCMScheduler", {}),
    ]
    return SamplerCatalogue({name: SamplerFactory(name, cls, dict(opts)) for name, cls, opts in entries})


#: The catalogue registered under the ``kernel.samplers`` entry point.
CATALOGUE: SamplerCatalogue = _catalogue()


def sampler(name: str, config: Any = None, **overrides: Any) -> Any:
    """The scheduler for A1111 sampler ``name`` (case-insensitive); unknown names list close matches."""
    return CATALOGUE.build(name, config, **overrides)


def sampler_names() -> list[str]:
    """The display names, in A1111's order."""
    return list(CATALOGUE)


Factory = Callable[[Any], Any]
