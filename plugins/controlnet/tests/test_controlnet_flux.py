"""Flux ControlNets against Diffusers (the oracle): the models (InstantX, union, XLabs; 1e-4), the three
pipelines (1e-3) with scales, windows, batches, true CFG, union modes, several nets and one union net with
several images; the control latents drawn before the starting latents; callbacks; folders both ways; bad
input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel

sys.path.insert(0, str(Path(__file__).parent))
import dit_fixtures as df  # noqa: E402

diffusers = pytest.importorskip("diffusers")

TEXT, IMAGE, INPAINT = "FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline"
UNION = dict(num_mode=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the model
def _ids(rows: int, cols: int) -> torch.Tensor:
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1], ids[..., 2] = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
    return ids.reshape(-1, 3)


def _model_inputs(xlabs: bool = False, batch: int = 2) -> dict:
    g = df.gen(3)
    channels = 64 if xlabs else 16
    control = torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1 if xlabs else torch.randn(batch, 16, channels,
                                                                                            generator=g)
    return dict(hidden_states=torch.randn(batch, 16, channels, generator=g), controlnet_cond=control,
                encoder_hidden_states=torch.randn(batch, 5, 32, generator=g),
                pooled_projections=torch.randn(batch, 32, generator=g), timestep=torch.tensor([0.9, 0.2][:batch]),
                img_ids=_ids(4, 4), txt_ids=torch.zeros(5, 3), guidance=torch.tensor([3.5] * batch))


MODEL_VARIANTS = {
    "instantx": ({}, {}),
    "union": (UNION, dict(controlnet_mode=torch.tensor([[2], [0]]))),
    "xlabs": (dict(in_channels=64, patch_size=2, conditioning_embedding_channels=16), {}),
    "schnell-deeper": (dict(guidance_embeds=False, num_layers=2, num_single_layers=3), dict(guidance=None)),
}


@torch.no_grad()
@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_model_forward_matches_diffusers(variant):
    over, extra = MODEL_VARIANTS[variant]
    theirs, ours = df.flux_net_pair(**over)
    inputs = {**_model_inputs(xlabs="conditioning_embedding_channels" in over), **extra}
    a = theirs(**inputs, conditioning_scale=0.7, return_dict=False)
    b = ours(**inputs, conditioning_scale=0.7, return_dict=False)
    for xs, ys in zip(a, b):
        assert len(xs) == len(ys)
        for x, y in zip(xs, ys):
            torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    assert b[0][0].abs().max() > 0.1  # randomised output layers: a real signal
    out = ours(**inputs)
    assert len(out.controlnet_single_block_samples) == ours.config.num_single_layers


@torch.no_grad()
@pytest.mark.parametrize("nets", [2, 1], ids=["two-nets", "one-union-net-two-images"])
def test_multi_model_sums_like_diffusers(nets):
    pairs = [df.flux_net_pair(seed=5 + k, **UNION) for k in range(nets)]
    theirs = diffusers.FluxMultiControlNetModel([p[0] for p in pairs])
    ours = kernel.component("FluxMultiControlNetModel")([p[1] for p in pairs])
    inputs = _model_inputs()
    inputs.update(controlnet_cond=[inputs["controlnet_cond"], inputs["controlnet_cond"].flip(0)],
                  controlnet_mode=[torch.tensor([1, 1]), torch.tensor([0, 2])], conditioning_scale=[0.5, 1.5])
    a, b = theirs(**inputs, return_dict=False), ours(**inputs, return_dict=False)
    for xs, ys in zip(a, b):
        for x, y in zip(xs, ys):
            torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


def test_from_transformer_copies_what_diffusers_copies():
    theirs_transformer, ours_transformer = df.transformer_pair("flux")
    kwargs = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2)
    theirs = diffusers.FluxControlNetModel.from_transformer(theirs_transformer, **kwargs)
    ours = kernel.component("FluxControlNetModel").from_transformer(ours_transformer, **kwargs)
    a, b = theirs.state_dict(), ours.state_dict()
    assert set(a) == set(b)
    zero = ("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder")
    for k in a:
        if not k.startswith(zero):
            assert torch.equal(a[k], b[k]), k
    assert not any(b[k].any() for k in b if k.startswith(zero))


@torch.no_grad()
def test_model_folders_load_both_ways(tmp_path):
    theirs, ours = df.flux_net_pair(**UNION)
    inputs = dict(_model_inputs(), controlnet_mode=torch.tensor([[1], [2]]))
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.component("FluxControlNetModel").from_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.FluxControlNetModel.from_pretrained(tmp_path / "ours")
    for x, y in zip(theirs(**inputs, return_dict=False)[1], loaded(**inputs, return_dict=False)[1]):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    for x, y in zip(back(**inputs, return_dict=False)[0], ours(**inputs, return_dict=False)[0]):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ the pipelines
def _pair(name: str = TEXT, nets: int = 1, family: str = "flux", as_list: bool = False, **over):
    theirs_parts, ours_parts = df.components(family)
    pairs = [df.flux_net_pair(seed=5 + k, **over) for k in range(nets)]
    listed = as_list or nets > 1
    theirs = getattr(diffusers, name)(**theirs_parts, controlnet=[p[0] for p in pairs] if listed else pairs[0][0])
    ours = kernel.component(name)(**ours_parts, controlnet=[p[1] for p in pairs] if listed else pairs[0][1])
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _call(name: str = TEXT, controls: int = 1, size: int = df.SIZE, **kwargs) -> dict:
    images = [df.image(7 + k, size) for k in range(controls)]
    call = dict(prompt="a photo of a cat", control_image=images[0] if controls == 1 else images, height=size,
                width=size, num_inference_steps=3, output_type="np", max_sequence_length=16)
    if name != TEXT:
        call.update(image=df.image(1, size), strength=0.7)
    if name == INPAINT:
        call["mask_image"] = df.mask(size)
    return {**call, **kwargs}


def _same(theirs, ours, **call):
    out = ours(generator=df.gen(0), **call).images
    df.assert_close(theirs(generator=df.gen(0), **call).images, out)
    return out


TWO = dict(controlnet_conditioning_scale=[0.6, 1.2], control_guidance_start=[0.0, 0.3],
           control_guidance_end=[0.8, 1.0])
CASES = {  # name: (pipeline, nets, net overrides, pair options, call)
    "text": (TEXT, 1, {}, {}, {}),
    "text-scale-guidance": (TEXT, 1, {}, {}, dict(controlnet_conditioning_scale=0.5, guidance_scale=3.0)),
    "text-window-batch": (TEXT, 1, {}, {}, dict(prompt=["a cat", "a dog"], num_images_per_prompt=2,
                                                control_guidance_start=0.3, control_guidance_end=0.8)),
    "text-true-cfg": (TEXT, 1, {}, {}, dict(negative_prompt="blurry", true_cfg_scale=2.5)),
    "text-union": (TEXT, 1, UNION, {}, dict(control_mode=2, prompt=["a cat", "a dog"])),
    "text-two-nets": (TEXT, 2, {}, {}, TWO),
    # one union net, two control images with their own modes (Diffusers needs the per-image lists spelt out)
    "text-union-two-images": (TEXT, 1, UNION, dict(as_list=True), dict(TWO, control_mode=[0, 2], controls=2)),
    "text-xlabs": (TEXT, 1, dict(in_channels=64, patch_size=2, conditioning_embedding_channels=16),
                   dict(family="xlabs"), dict(size=64, controlnet_conditioning_scale=0.7)),
    "image": (IMAGE, 1, {}, {}, {}),
    "image-union-window": (IMAGE, 1, UNION, {}, dict(control_mode=1, control_guidance_end=0.7)),
    "image-two-nets-batch": (IMAGE, 2, {}, {}, dict(TWO, control_mode=[None, None], num_images_per_prompt=2)),
    "inpaint": (INPAINT, 1, {}, {}, dict(controlnet_conditioning_scale=0.8, guidance_scale=4.0)),
    "inpaint-union": (INPAINT, 1, UNION, {}, dict(control_mode=0, strength=1.0)),
    "inpaint-two-nets-batch": (INPAINT, 2, {}, {}, dict(TWO, control_mode=[None, None], prompt=["a cat", "a dog"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_diffusers(case):
    name, nets, over, options, call = CASES[case]
    call = dict(call)
    controls, size = call.pop("controls", nets), call.pop("size", df.SIZE)
    theirs, ours = _pair(name, nets, **options, **over)
    _same(theirs, ours, **_call(name, controls, size, **call))


def test_one_union_net_uses_every_image():
    """Diffusers drops every image but the first when a one-net FluxMultiControlNetModel gets a single window;
    here each image is a control of its own whatever the window arguments."""
    _, ours = _pair(TEXT, 1, as_list=True, **UNION)
    call = _call(TEXT, 2, control_mode=[0, 2], controlnet_conditioning_scale=[0.5, 0.8])
    both = ours(generator=df.gen(0), **call).images
    first = ours(generator=df.gen(0), **{**call, "controlnet_conditioning_scale": [0.5, 0.0]}).images
    assert np.abs(both - first).max() > 1e-3
    assert "control_image_1" in ours._callback_tensor_inputs


def test_control_steers_and_scale_zero_is_the_plain_pipeline():
    """The control latents come from the generator before the starting noise, as in Diffusers: with the
    control off, the picture is the plain pipeline's for a generator advanced by that draw."""
    _, ours = _pair()
    plain = kernel.component("FluxPipeline")(**df.components("flux")[1])
    plain.set_progress_bar_config(disable=True)
    call = _call(guidance_scale=7.0)
    controlled = ours(generator=df.gen(0), **call).images
    off = ours(generator=df.gen(0), **{**call, "controlnet_conditioning_scale": 0.0}).images
    g = df.gen(0)
    torch.randn(1, 4, 16, 16, generator=g)  # the control image's posterior sample
    base = plain(generator=g, **{k: v for k, v in call.items() if k != "control_image"}).images
    assert np.abs(controlled - base).max() > 0.05
    np.testing.assert_array_equal(off, base)


def test_true_cfg_runs_the_controlnet_once_per_step():
    """The negative pass reuses the positive pass's residuals (Diffusers' numbers, half the ControlNet work)."""
    _, ours = _pair()
    calls = []
    handle = ours.controlnet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        ours(generator=df.gen(0), **_call(negative_prompt="blurry", true_cfg_scale=2.0, num_inference_steps=2))
    finally:
        handle.remove()
    assert calls == [1, 1]


def test_callback_sees_and_replaces_the_control_like_diffusers():
    theirs, ours = _pair()
    seen = []

    def blank(pipe, i, t, tensors):
        seen.append(tuple(tensors["control_image"].shape))
        return {"control_image": torch.zeros_like(tensors["control_image"])} if i == 0 else {}

    call = _call(callback_on_step_end=blank, callback_on_step_end_tensor_inputs=["latents", "control_image"])
    changed = _same(theirs, ours, **call)
    assert seen[-1] == (1, 64, 16)  # packed control latents
    plain = ours(generator=df.gen(0), **_call()).images
    assert np.abs(changed - plain).max() > 1e-3


def test_pipeline_folders_load_both_ways(tmp_path):
    theirs, ours = _pair(TEXT, 1, **UNION)
    call = _call(num_inference_steps=2, control_mode=1)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.load(str(tmp_path / "theirs"))
    assert type(loaded).__name__ == TEXT and loaded.controlnet.union
    loaded.set_progress_bar_config(disable=True)
    df.assert_close(theirs(generator=df.gen(0), **call).images, loaded(generator=df.gen(0), **call).images)
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.FluxControlNetPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    df.assert_close(back(generator=df.gen(0), **call).images, ours(generator=df.gen(0), **call).images)


# ------------------------------------------------------------------ bad input
BAD = {  # name: (pipeline, nets, net overrides, as_list, call overrides, argument named)
    "no-image": (TEXT, 1, {}, False, dict(control_image=None), "control_image"),
    "image-count": (TEXT, 1, {}, False, dict(prompt=["a", "b"], control_image=[df.image()] * 3), "control_image"),
    "union-no-mode": (TEXT, 1, UNION, False, {}, "control_mode"),
    "union-mode-range": (IMAGE, 1, UNION, False, dict(control_mode=3), "control_mode"),
    "single-mode-list": (TEXT, 1, UNION, False, dict(control_mode=[1]), "control_mode"),
    "multi-modes": (TEXT, 2, {}, False, dict(control_image=[df.image()] * 2, control_mode=[None]), "control_mode"),
    "multi-not-a-list": (TEXT, 2, {}, False, dict(control_image=df.image()), "control_image"),
    "multi-scales": (INPAINT, 2, {}, False, dict(control_image=[df.image()] * 2, controlnet_conditioning_scale=[1.0]),
                     "controlnet_conditioning_scale"),
    "union-list-windows": (TEXT, 1, UNION, True, dict(control_image=[df.image()] * 2, control_mode=[0, 1],
                                                      control_guidance_start=[0.0, 0.1, 0.2]),
                           "control_guidance_start"),
    "window": (TEXT, 1, {}, False, dict(control_guidance_start=0.5, control_guidance_end=0.5),
               "control_guidance_start"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error_naming_the_argument(case):
    name, nets, over, as_list, overrides, argument = BAD[case]
    _, ours = _pair(name, nets, as_list=as_list, **over)
    with pytest.raises(ValueError, match=argument):
        ours(generator=df.gen(0), **_call(name, **overrides))


def test_wrong_controlnet_type_is_refused():
    with pytest.raises(ValueError, match="controlnet must be a FluxControlNetModel"):
        kernel.component(TEXT)(**df.components("flux")[1], controlnet=df.sd3_net())
