"""SD3 / SD3.5 ControlNets against Diffusers (the oracle): the models (1e-4), the two pipelines (1e-3) with
scales, windows, batches, several nets, SD3.5 nets and inpainting; folders both ways; the global-RNG draw of
the control latents; bad input."""

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

PIPE, INPAINT = "StableDiffusion3ControlNetPipeline", "StableDiffusion3ControlNetInpaintingPipeline"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the model
def _model_inputs(extra_channels: int = 0, text: bool = True, batch: int = 2) -> dict:
    g = df.gen(3)
    return dict(hidden_states=torch.randn(batch, 16, 8, 8, generator=g),
                controlnet_cond=torch.randn(batch, 16 + extra_channels, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 5, 32, generator=g) if text else None,
                pooled_projections=torch.randn(batch, 64, generator=g), timestep=torch.tensor([700.0, 20.0][:batch]))


MODEL_VARIANTS = {
    "sd3": {},
    "extra-channel-dual-rms": dict(extra_conditioning_channels=1, dual_attention_layers=(0,), qk_norm="rms_norm",
                                   num_layers=2),
    "sd35-image-only": dict(joint_attention_dim=None, pos_embed_type=None, force_zeros_for_pooled_projection=False),
}


@torch.no_grad()
@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_model_forward_matches_diffusers(variant):
    over = MODEL_VARIANTS[variant]
    theirs, ours = df.sd3_net_pair(**over)
    inputs = _model_inputs(over.get("extra_conditioning_channels", 0), text="joint_attention_dim" not in over)
    a = theirs(**inputs, conditioning_scale=0.7, return_dict=False)[0]
    b = ours(**inputs, conditioning_scale=0.7, return_dict=False)[0]
    assert len(a) == len(b) == ours.config.num_layers
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    assert b[0].abs().max() > 0.1  # randomised output layers: a real signal
    assert ours(**inputs).controlnet_block_samples[0].shape == (2, 64, 32)


@torch.no_grad()
def test_multi_model_sums_the_nets_like_diffusers():
    pairs = [df.sd3_net_pair(seed=5 + k) for k in range(2)]
    theirs = diffusers.SD3MultiControlNetModel([p[0] for p in pairs])
    ours = kernel.component("SD3MultiControlNetModel")([p[1] for p in pairs])
    inputs = _model_inputs()
    inputs = dict(inputs, controlnet_cond=[inputs["controlnet_cond"], inputs["controlnet_cond"].flip(0)],
                  conditioning_scale=[0.5, 1.5])
    a, b = theirs(**inputs, return_dict=False)[0], ours(**inputs, return_dict=False)[0]
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="conditioning_scale"):
        ours(**{**inputs, "conditioning_scale": [1.0]})


def test_from_transformer_copies_what_diffusers_copies():
    # A transformer of its own: Diffusers' from_transformer writes num_layers into the transformer's config.
    theirs_transformer, ours_transformer = df.transformer_pair("sd3")
    ours = kernel.component("SD3ControlNetModel").from_transformer(ours_transformer, num_layers=1)
    theirs = diffusers.SD3ControlNetModel.from_transformer(theirs_transformer, num_layers=1)
    assert ours_transformer.config.num_layers == 2
    a, b = theirs.state_dict(), ours.state_dict()
    assert set(a) == set(b)
    for k in a:
        if not k.startswith(("controlnet_blocks", "pos_embed_input")):
            assert torch.equal(a[k], b[k]), k
    assert not any(b[k].any() for k in b if k.startswith(("controlnet_blocks", "pos_embed_input")))
    assert ours.config.extra_conditioning_channels == 1 and ours.config.num_layers == 1


@torch.no_grad()
def test_model_folders_load_both_ways(tmp_path):
    theirs, ours = df.sd3_net_pair(extra_conditioning_channels=1)
    inputs = _model_inputs(1)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.component("SD3ControlNetModel").from_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.SD3ControlNetModel.from_pretrained(tmp_path / "ours")
    for x, y in zip(theirs(**inputs, return_dict=False)[0], loaded(**inputs, return_dict=False)[0]):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    for x, y in zip(back(**inputs, return_dict=False)[0], ours(**inputs, return_dict=False)[0]):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ the pipelines
def _pair(name: str = PIPE, nets: int = 1, **over):
    theirs_parts, ours_parts = df.components("sd3")
    pairs = [df.sd3_net_pair(seed=5 + k, **over) for k in range(nets)]
    theirs = getattr(diffusers, name)(**theirs_parts, controlnet=pairs[0][0] if nets == 1 else [p[0] for p in pairs])
    ours = kernel.component(name)(**ours_parts, controlnet=pairs[0][1] if nets == 1 else [p[1] for p in pairs])
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _call(nets: int = 1, inpaint: bool = False, **kwargs) -> dict:
    control = [df.image(7 + k) for k in range(nets)]
    call = dict(prompt="a photo of a cat", control_image=control[0] if nets == 1 else control, height=df.SIZE,
                width=df.SIZE, num_inference_steps=3, output_type="np", max_sequence_length=16)
    if inpaint:
        call["control_mask"] = df.mask()
    return {**call, **kwargs}


def _run(pipe, seed: int = 123, **call):
    torch.manual_seed(seed)  # the control latents are sampled with the global RNG, as in Diffusers
    return pipe(generator=df.gen(0), **call).images


def _same(theirs, ours, **call):
    out = _run(ours, **call)
    df.assert_close(_run(theirs, **call), out)
    return out


CASES = {  # name: (pipeline, nets, net config overrides, call)
    "default": (PIPE, 1, {}, {}),
    "scale-no-cfg": (PIPE, 1, {}, dict(controlnet_conditioning_scale=0.4, guidance_scale=1.0)),
    "window-batch": (PIPE, 1, {}, dict(prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"],
                                       num_images_per_prompt=2, control_guidance_start=0.3,
                                       control_guidance_end=0.8)),
    "per-prompt-images": (PIPE, 1, {}, dict(prompt=["a cat", "a dog"], control_image=[df.image(1), df.image(2)])),
    "two-nets": (PIPE, 2, {}, dict(controlnet_conditioning_scale=[0.6, 1.3], control_guidance_start=[0.0, 0.4],
                                   control_guidance_end=[0.7, 1.0])),
    # SD3.5 nets: no text stream, no own position embedding (the transformer's is lent), the prompt's pooled text
    "sd35-net": (PIPE, 1, df.SD35, dict(controlnet_conditioning_scale=0.8)),
    "inpaint": (INPAINT, 1, dict(extra_conditioning_channels=1), {}),
    "inpaint-batch-window": (INPAINT, 1, dict(extra_conditioning_channels=1),
                             dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, control_guidance_end=0.6,
                                  controlnet_conditioning_scale=0.7)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_diffusers(case):
    name, nets, over, call = CASES[case]
    theirs, ours = _pair(name, nets, **over)
    _same(theirs, ours, **_call(nets, inpaint=name == INPAINT, **call))


def test_sd35_net_borrows_the_transformers_position_embedding():
    _, ours = _pair(PIPE, 1, **df.SD35)
    net = ours.controlnet
    assert net.pos_embed is not ours.transformer.pos_embed
    assert torch.equal(net.pos_embed.proj.weight, ours.transformer.pos_embed.proj.weight)


def test_control_steers_and_scale_zero_is_the_plain_pipeline():
    _, ours = _pair()
    plain = kernel.component("StableDiffusion3Pipeline")(**df.components("sd3")[1])
    plain.set_progress_bar_config(disable=True)
    call = _call()
    controlled = _run(ours, **call)
    off = _run(ours, **call, controlnet_conditioning_scale=0.0)
    base = _run(plain, **{k: v for k, v in call.items() if k != "control_image"})
    assert np.abs(controlled - base).max() > 0.05
    np.testing.assert_array_equal(off, base)


def test_control_latents_come_from_the_global_rng():
    """As in Diffusers: the same generator with another global seed gives another image."""
    _, ours = _pair()
    call = _call()
    np.testing.assert_array_equal(_run(ours, seed=1, **call), _run(ours, seed=1, **call))
    assert np.abs(_run(ours, seed=1, **call) - _run(ours, seed=2, **call)).max() > 1e-3


def test_controlnet_pooled_projections_replace_the_nets_pooled_text():
    """Diffusers' argument (which its pipelines cannot use: they test a tensor's truth value): one row per prompt
    or per image, given to the nets in place of their pooled text."""
    _, ours = _pair()  # an SD3.0 net: zeros for the pooled text by default
    call = _call()
    default = _run(ours, **call)
    np.testing.assert_array_equal(_run(ours, **call, controlnet_pooled_projections=torch.zeros(1, 64)), default)
    assert np.abs(_run(ours, **call, controlnet_pooled_projections=torch.ones(1, 64)) - default).max() > 1e-3


def test_tensor_control_image_is_used_as_given_and_sets_the_size():
    theirs, ours = _pair()
    control = torch.rand(1, 3, 16, 24, generator=df.gen(4)) * 2 - 1
    call = {k: v for k, v in _call(control_image=control).items() if k not in ("height", "width")}
    out = _same(theirs, ours, **call)
    assert out.shape == (1, 16, 24, 3)


def test_pipeline_folders_load_both_ways(tmp_path):
    theirs, ours = _pair()
    call = _call(num_inference_steps=2)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.load(str(tmp_path / "theirs"))
    assert type(loaded).__name__ == PIPE and type(loaded.controlnet).__name__ == "SD3ControlNetModel"
    loaded.set_progress_bar_config(disable=True)
    df.assert_close(_run(theirs, **call), _run(loaded, **call))
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.StableDiffusion3ControlNetPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    df.assert_close(_run(back, **call), _run(ours, **call))


# ------------------------------------------------------------------ bad input
BAD = {
    "no-image": (PIPE, 1, dict(control_image=None), "control_image"),
    "image-count": (PIPE, 1, dict(prompt=["a", "b"], control_image=[df.image(1)] * 3), "control_image"),
    "tensor-size": (PIPE, 1, dict(control_image=torch.zeros(1, 3, 16, 16)), "control_image"),
    "scale-list": (PIPE, 1, dict(controlnet_conditioning_scale=[0.5, 0.5]), "controlnet_conditioning_scale"),
    "window": (PIPE, 1, dict(control_guidance_start=0.7, control_guidance_end=0.2), "control_guidance_start"),
    "multi-not-a-list": (PIPE, 2, dict(control_image=df.image()), "control_image"),
    "multi-count": (PIPE, 2, dict(control_image=[df.image()] * 3), "control_image"),
    "multi-ends": (PIPE, 2, dict(control_guidance_end=[1.0]), "control_guidance_end"),
    "pooled-rows": (PIPE, 1, dict(controlnet_pooled_projections=torch.zeros(3, 64)), "controlnet_pooled_projections"),
    "no-mask": (INPAINT, 1, dict(control_mask=None), "control_mask"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error_naming_the_argument(case):
    name, nets, overrides, argument = BAD[case]
    _, ours = _pair(name, nets, **(dict(extra_conditioning_channels=1) if name == INPAINT else {}))
    with pytest.raises(ValueError, match=argument):
        _run(ours, **_call(nets, inpaint=name == INPAINT, **overrides))


def test_wrong_controlnet_type_is_refused():
    with pytest.raises(ValueError, match="controlnet must be a SD3ControlNetModel"):
        kernel.component(PIPE)(**df.components("sd3")[1], controlnet=df.flux_net())
