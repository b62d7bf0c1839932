"""The A1111 catalogue: names, case-insensitive lookup, documented Diffusers mapping, errors."""

from __future__ import annotations

import pytest

import diffusers
import kernel
from kernel.registry import get_registry
from kernel_samplers_a1111 import CATALOGUE, SD_SCHEDULER_CONFIG, UnknownSamplerError, sampler

NAMES = [
    "Euler", "Euler a", "LMS", "LMS Karras", "Heun", "DPM2", "DPM2 a", "DPM2 Karras", "DPM2 a Karras",
    "DPM++ 2S a", "DPM++ 2S a Karras", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DPM++ SDE Karras",
    "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "DDIM", "PLMS", "UniPC", "LCM",
]

#: Diffusers' documented A1111 table (plus DDIM/PLMS/UniPC/LCM): class and the options it names.
DOCUMENTED = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
OURS = {
    "DPM++ 2S a": ("DPMPP2SAncestralScheduler", {"use_karras_sigmas": False}),
    "DPM++ 2S a Karras": ("DPMPP2SAncestralScheduler", {"use_karras_sigmas": True}),
    "DPM++ 3M SDE": ("DPMPP3MSDEScheduler", {}),
    "DPM fast": ("DPMFastScheduler", {}),
    "DPM adaptive": ("DPMAdaptiveScheduler", {}),
}


def test_names_are_the_a1111_catalogue():
    assert list(CATALOGUE) == NAMES
    assert set(DOCUMENTED) | set(OURS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_case_insensitive_lookup_everywhere(name):
    factory = CATALOGUE[name]
    assert CATALOGUE[name.lower()] is factory and CATALOGUE[name.upper()] is factory
    assert name.swapcase() in CATALOGUE
    merged = get_registry().samplers()
    assert merged[name.lower()] is factory
    assert factory.display_name == name


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_mapping_with_diffusers_classes(name, monkeypatch):
    """Resolve names to Diffusers' own classes: the built scheduler carries the documented options."""
    monkeypatch.setattr(kernel, "component", lambda cls_name: getattr(diffusers, cls_name))
    cls_name, documented = DOCUMENTED[name]
    assert CATALOGUE[name].class_name == cls_name
    sched = CATALOGUE[name](None)
    assert type(sched).__name__ == cls_name
    for key, value in documented.items():
        assert sched.config[key] == value, (name, key)
    if "use_karras_sigmas" in sched.config and "Karras" not in name:
        assert sched.config["use_karras_sigmas"] is False
    if cls_name == "DPMSolverMultistepScheduler" and "SDE" not in name:
        assert sched.config["algorithm_type"] == "dpmsolver++"
    # without a config the factories start from Stable Diffusion 1.x's scheduler config
    assert sched.config["beta_schedule"] == "scaled_linear" and sched.config["beta_end"] == 0.012


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_mapping_with_installed_plugins(name):
    cls_name, documented = DOCUMENTED[name]
    if not get_registry().has(cls_name):
        pytest.skip(f"{cls_name} plugin not installed")
    sched = CATALOGUE[name]({**SD_SCHEDULER_CONFIG, "beta_start": 0.001})
    assert type(sched).__name__ == cls_name
    assert sched.config["beta_start"] == 0.001
    for key, value in documented.items():
        assert sched.config[key] == value, (name, key)


@pytest.mark.parametrize("name", sorted(OURS))
def test_own_samplers_build(name):
    cls_name, options = OURS[name]
    sched = CATALOGUE[name](None)
    assert type(sched).__name__ == cls_name
    for key, value in options.items():
        assert sched.config[key] == value
    assert kernel.component(cls_name) is type(sched)


def test_switching_from_a_karras_sde_config_pins_the_options(monkeypatch):
    monkeypatch.setattr(kernel, "component", lambda cls_name: getattr(diffusers, cls_name))
    karras_sde = CATALOGUE["DPM++ 2M SDE Karras"](None)
    plain = CATALOGUE["dpm++ 2m"](karras_sde)  # a scheduler object is accepted too
    assert plain.config.use_karras_sigmas is False and plain.config.algorithm_type == "dpmsolver++"
    exp_cfg = {**SD_SCHEDULER_CONFIG, "use_exponential_sigmas": True}
    assert CATALOGUE["DPM++ 2S a Karras"](exp_cfg).config.use_exponential_sigmas is False


def test_kernel_front_door():
    assert set(NAMES) <= set(kernel.samplers())
    sched = kernel.sampler("dpm++ 2s a karras")
    assert type(sched).__name__ == "DPMPP2SAncestralScheduler" and sched.config.use_karras_sigmas
    with pytest.raises(ValueError, match="DPM\\+\\+ 2M Karras"):
        kernel.sampler("DPM++ 2M Karas")


def test_unknown_names_list_close_matches():
    with pytest.raises(UnknownSamplerError, match="Close matches: DPM\\+\\+ 2M Karras") as err:
        CATALOGUE["dpm++ 2m karas"]
    assert isinstance(err.value, ValueError) and isinstance(err.value, KeyError)
    with pytest.raises(ValueError, match="accepted names: Euler, Euler a"):
        sampler("Kerras")
    assert CATALOGUE.get("nope") is None
    with pytest.raises(TypeError, match="sampler name"):
        CATALOGUE[3]
    with pytest.raises(TypeError, match="config must be a dict"):
        CATALOGUE["DPM fast"](42)
