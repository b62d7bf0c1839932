"""ControlNet composed with the other per-call and in-place pieces against Diffusers (fp32, 1e-3): IP-Adapter,
LoRA, PAG, in either loading order; a LoRA never lands in the ControlNet and PAG never perturbs its attention.

The pipelines are built the way a user composes them: a plain family pipeline (separate text encoders per
side, since a LoRA changes them in place) turned into its ControlNet variant with ``from_pipe``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parents[1] / "lora" / "tests", HERE.parents[1] / "ip-adapter" / "tests"):
    sys.path.insert(0, str(folder))
import cn_fixtures as cf  # noqa: E402
import dit_fixtures as dfx  # noqa: E402
import ip_fixtures as ipf  # noqa: E402
import lora_fixtures as lf  # noqa: E402
import transformer_fixtures as tfx  # noqa: E402
from cn_fixtures import fx, single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 32
CALL = dict(prompt="a photo of a cat", num_inference_steps=2, output_type="np")


def _controlled(name: str, xl: bool = False, seed: int = 0, **components):
    """(Diffusers' ``name``, ours) from fresh plain pipelines with a ControlNet pair, via ``from_pipe``."""
    d, o = lf.pipelines(xl=xl, seed=seed)
    theirs_net, ours_net = cf.union_controlnet() if "Union" in name else cf.controlnet(xl=xl)
    d = getattr(diffusers, name).from_pipe(d, controlnet=theirs_net, **components)
    o = kernel.component(name).from_pipe(o, controlnet=ours_net, **components)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    return d, o


def _images(pipe, seed: int = 0, **call):
    if "Union" in type(pipe).__name__:
        control = dict(control_image=cf.control_image(SIZE), control_mode=1)
    else:
        control = dict(image=cf.control_image(SIZE))
    return pipe(generator=fx.gen(seed), **{**CALL, **control, **call}).images


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_untouched(net: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    """The ControlNet holds no LoRA layer and exactly its weights of before."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not [n for n, m in net.named_modules() if isinstance(m, BaseTunerLayer)]
    after = net.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def _ip_state(unet):
    return ipf.random_ip_adapter(unet, "ip", seed=0)


# ---------------------------------------------------------------------------- IP-Adapter
IP_CASES = {
    "sd-text": ("StableDiffusionControlNetPipeline", False, {}),
    "sd-inpaint": ("StableDiffusionControlNetInpaintPipeline", False, dict(inpaint=True)),
    "sdxl-text": ("StableDiffusionXLControlNetPipeline", True, {}),
    "sdxl-image-guess": ("StableDiffusionXLControlNetImg2ImgPipeline", True, dict(image_task=True, guess_mode=True)),
    "sd-pag": ("StableDiffusionControlNetPAGPipeline", False, dict(pag_scale=2.0)),
    "sdxl-union": ("StableDiffusionXLControlNetUnionPipeline", True, {}),
}


def _task_call(inpaint: bool = False, image_task: bool = False, **call):
    if not (inpaint or image_task):
        return call
    extra = dict(image=fx.image(SIZE, SIZE, seed=1), control_image=cf.control_image(SIZE), strength=0.8)
    if inpaint:
        extra["mask_image"] = fx.mask(SIZE, SIZE)
    return {**extra, **call}


@pytest.mark.parametrize("case", list(IP_CASES))
def test_ip_adapter_on_controlnet_pipelines_matches_diffusers(case):
    name, xl, call = IP_CASES[case]
    encoder, extractor = ipf.image_encoder()
    d, o = _controlled(name, xl=xl, image_encoder=encoder, feature_extractor=extractor)
    state = _ip_state(d.unet)
    for p in (d, o):
        p.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    call = _task_call(**call)
    ours = _images(o, ip_adapter_image=ipf.ip_image(), **call)
    lf.assert_close(ours, _images(d, ip_adapter_image=ipf.ip_image(), **call))
    o.set_ip_adapter_scale(0.0)
    assert np.abs(ours - _images(o, ip_adapter_image=ipf.ip_image(), **call)).max() > 1e-2, \
        "the image prompt must change the picture"


def test_ip_adapter_embeds_on_controlnet_pipeline_match_the_image():
    encoder, extractor = ipf.image_encoder()
    _, o = _controlled("StableDiffusionControlNetPipeline", image_encoder=encoder, feature_extractor=extractor)
    o.load_ip_adapter(_ip_state(o.unet), subfolder=None, weight_name=None, image_encoder_folder=None)
    embeds = o.prepare_ip_adapter_image_embeds(ipf.ip_image(), None, "cpu", 1, True)
    lf.assert_close(_images(o, ip_adapter_image_embeds=embeds), _images(o, ip_adapter_image=ipf.ip_image()), atol=1e-6)
    with pytest.raises(ValueError, match="ip_adapter_image"):
        _images(o)  # an IP-Adapter is loaded: the call must bring its image


# ---------------------------------------------------------------------------- LoRA
def _sd_lora(d, xl: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA for the UNet (attention, resnets: layers the ControlNet has under the same names) and the text
    encoder(s), in Diffusers' prefixed peft layout."""
    layers = lf.prefixed("unet", lf.random_lora(d.unet, seed=seed))
    layers.update(lf.prefixed("text_encoder", lf.random_lora(d.text_encoder, lf.TEXT_TARGETS, seed=seed + 1)))
    if xl:
        layers.update(lf.prefixed("text_encoder_2", lf.random_lora(d.text_encoder_2, lf.TEXT_TARGETS, seed=seed + 2)))
    return layers


@pytest.mark.parametrize("order", ["lora-then-controlnet", "controlnet-then-lora"])
def test_sdxl_controlnet_pag_lora_matches_diffusers(order):
    name, pag = "StableDiffusionXLControlNetPAGPipeline", dict(pag_applied_layers=["mid", "up"])
    d, o = lf.pipelines(xl=True)
    layers = _sd_lora(d, xl=True)
    d.load_lora_weights(dict(layers), adapter_name="style")
    d = diffusers.StableDiffusionXLControlNetPAGPipeline.from_pipe(d, controlnet=cf.controlnet(xl=True)[0], **pag)
    net = cf.controlnet(xl=True)[1]
    before = _state(net)
    if order == "lora-then-controlnet":
        o.load_lora_weights(dict(layers), adapter_name="style")
        o = kernel.component(name).from_pipe(o, controlnet=net, **pag)
    else:
        o = kernel.component(name).from_pipe(o, controlnet=net, **pag)
        o.load_lora_weights(dict(layers), adapter_name="style")
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    assert lf.tuner_count(o) == lf.tuner_count(d) > 0
    call = dict(pag_scale=2.0, cross_attention_kwargs={"scale": 0.7}, controlnet_conditioning_scale=0.8)
    ours = _images(o, **call)
    lf.assert_close(ours, _images(d, **call))
    _assert_untouched(o.controlnet, before)
    o.disable_lora()
    assert np.abs(ours - _images(o, **call)).max() > 0.02, "the LoRA must change the picture"


@pytest.mark.parametrize("order", ["ip-then-lora", "lora-then-ip"])
def test_sd_controlnet_ip_adapter_lora_matches_diffusers(order):
    encoder, extractor = ipf.image_encoder()
    d, o = _controlled("StableDiffusionControlNetPipeline", image_encoder=encoder, feature_extractor=extractor)
    layers, ip_state = _sd_lora(d, seed=3), _ip_state(d.unet)
    steps = [lambda p: p.load_ip_adapter(ip_state, subfolder=None, weight_name=None, image_encoder_folder=None),
             lambda p: p.load_lora_weights(dict(layers))]
    before = _state(o.controlnet)
    for step in steps:  # Diffusers: always IP-Adapter first
        step(d)
    for step in (steps if order == "ip-then-lora" else steps[::-1]):
        step(o)
    call = dict(ip_adapter_image=ipf.ip_image(), cross_attention_kwargs={"scale": 0.6})
    ours = _images(o, **call)
    lf.assert_close(ours, _images(d, **call))
    _assert_untouched(o.controlnet, before)
    o.unload_lora_weights()
    o.unload_ip_adapter()
    d.unload_lora_weights()
    d.unload_ip_adapter()
    lf.assert_close(_images(o), _images(d))  # both pieces come out cleanly


def test_sd_inpaint_controlnet_lora_matches_diffusers_and_fusing_leaves_the_controlnet():
    name = "StableDiffusionControlNetInpaintPipeline"
    d, o = _controlled(name)
    layers = _sd_lora(d, seed=5)
    before = _state(o.controlnet)
    for p in (d, o):
        p.load_lora_weights(dict(layers), adapter_name="paint")
    call = _task_call(inpaint=True, controlnet_conditioning_scale=0.9, strength=0.9)
    ours = _images(o, **call)
    lf.assert_close(ours, _images(d, **call))
    for p in (d, o):
        p.fuse_lora(lora_scale=0.5)
    lf.assert_close(_images(o, **call), _images(d, **call))
    _assert_untouched(o.controlnet, before)
    o.unfuse_lora()
    o.unload_lora_weights()
    _assert_untouched(o.controlnet, before)


@pytest.fixture(scope="module")
def flux_loras():
    d, _ = tfx.flux_pipelines()
    return {"a": {**tfx.prefixed("transformer", tfx.random_lora(d.transformer, tfx.FLUX_TARGETS, seed=0)),
                  **tfx.prefixed("text_encoder", tfx.random_lora(d.text_encoder, tfx.TEXT_TARGETS, seed=1))},
            "b": tfx.prefixed("transformer", tfx.random_lora(d.transformer, tfx.FLUX_TARGETS[:6], rank=2, seed=2))}


@pytest.mark.parametrize("order", ["loras-then-controlnet", "controlnet-then-loras"])
def test_flux_controlnet_two_loras_match_diffusers(flux_loras, order):
    d, o = tfx.flux_pipelines()
    theirs_net, ours_net = dfx.flux_net_pair()
    before = _state(ours_net)

    def load(p):
        for adapter, layers in flux_loras.items():
            p.load_lora_weights(dict(layers), adapter_name=adapter)
        p.set_adapters(["a", "b"], adapter_weights=[0.8, 0.5])

    load(d)
    d = diffusers.FluxControlNetPipeline.from_pipe(d, controlnet=theirs_net)
    if order == "loras-then-controlnet":
        load(o)
        o = kernel.component("FluxControlNetPipeline").from_pipe(o, controlnet=ours_net)
    else:
        o = kernel.component("FluxControlNetPipeline").from_pipe(o, controlnet=ours_net)
        load(o)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    assert o.get_list_adapters() == d.get_list_adapters()
    call = dict(tfx.CALLS["flux"], control_image=dfx.image(), controlnet_conditioning_scale=0.7,
                joint_attention_kwargs={"scale": 0.6})
    ours = o(generator=fx.gen(0), **call).images
    lf.assert_close(ours, d(generator=fx.gen(0), **call).images)
    _assert_untouched(o.controlnet, before)
    o.set_adapters("b")
    assert np.abs(ours - o(generator=fx.gen(0), **call).images).max() > 0.02, "adapter a must matter"


# ---------------------------------------------------------------------------- PAG leaves the ControlNet alone
def test_pag_never_perturbs_the_controlnet_attention():
    """The perturbed pass swaps the UNet's self-attention processors only: the ControlNet's (whose module names
    ``pag_applied_layers`` match as well) keep theirs in every evaluation."""
    from kernel_guiders.pag import PerturbedAttnProcessor, select_self_attention

    _, o = _controlled("StableDiffusionControlNetPAGPipeline", pag_applied_layers=["mid", "down_blocks.1"])
    seen = {"controlnet": [], "unet": []}

    def watch(owner):
        def hook(module, args):
            seen[owner].append(isinstance(module.processor, PerturbedAttnProcessor))
        return hook

    layers = o.pag_applied_layers
    handles = [m.register_forward_pre_hook(watch(owner)) for owner in seen
               for m in select_self_attention(getattr(o, owner), layers)]
    try:
        perturbed = _images(o, pag_scale=3.0)
    finally:
        for h in handles:
            h.remove()
    assert seen["controlnet"] and not any(seen["controlnet"])
    assert any(seen["unet"]), "the UNet's perturbed pass must have run"
    # the ControlNet's residuals steer the perturbed pass too: without it PAG gives another picture
    assert np.abs(perturbed - _images(o, pag_scale=3.0, controlnet_conditioning_scale=0.0)).max() > 1e-2
