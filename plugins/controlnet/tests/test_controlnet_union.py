"""SDXL ControlNet-Union against Diffusers: the model (1e-4: one and several control images, scales, guess mode,
a batch whose rows interact as in the reference), ``MultiControlNetUnionModel``, the three pipelines (1e-3) with
modes, scales, windows, batches, several images in one net and several nets; folders both ways; bad input."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel

sys.path.insert(0, str(Path(__file__).parent))
import cn_fixtures as cf  # noqa: E402
from cn_fixtures import fx, single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel as _DiffusersMultiUnion  # noqa: E402
pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 32
TEXT, IMAGE, INPAINT = ("StableDiffusionXLControlNetUnionPipeline", "StableDiffusionXLControlNetUnionImg2ImgPipeline",
                        "StableDiffusionXLControlNetUnionInpaintPipeline")


# ---------------------------------------------------------------------------- the model
def _model_inputs(batch: int = 2, images: int = 1):
    g = fx.gen(3)
    return dict(sample=torch.randn(batch, 4, 8, 8, generator=g), timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(batch, 5, 64, generator=g),
                controlnet_cond=[torch.rand(batch, 3, 16, 16, generator=g) for _ in range(images)],
                added_cond_kwargs={"text_embeds": torch.randn(batch, 32, generator=g),
                                   "time_ids": torch.randn(batch, 6, generator=g)})


MODEL_CASES = {  # modes, scale, extra
    "one-image": ([2], 0.7, {}),
    "two-images-scales": ([0, 5], [0.6, 1.3], {}),
    "two-images-guess": ([1, 3], [0.5, 0.0], dict(guess_mode=True)),
    "one-image-guess": ([4], 0.8, dict(guess_mode=True)),
    "from-multi": ([0, 1], [0.4, 0.9], dict(from_multi=True)),
}


@torch.no_grad()
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_forward_matches_diffusers(case):
    modes, scale, extra = MODEL_CASES[case]
    theirs, ours = cf.union_controlnet()
    inputs = _model_inputs(images=len(modes))
    kind = ours.control_type_of(modes, 2)
    theirs_scale = [float(s) for s in scale] if isinstance(scale, list) else float(scale)
    a = theirs(**inputs, control_type=kind.clone(), control_type_idx=modes, conditioning_scale=theirs_scale,
               return_dict=False, **extra)
    b = ours(**inputs, control_type=kind, control_type_idx=modes, conditioning_scale=scale, return_dict=False, **extra)
    for x, y in zip([*a[0], a[1]], [*b[0], b[1]]):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    assert b[1].abs().max() > 1e-2


@torch.no_grad()
def test_control_tokens_attend_across_the_batch_as_in_the_reference():
    """Row 0 of a batch depends on row 1 (the reference's sequence-first attention): kept for the checkpoints."""
    _, ours = cf.union_controlnet()
    inputs = _model_inputs(batch=2)
    kind = ours.control_type_of([2], 2)
    whole = ours(**inputs, control_type=kind, control_type_idx=[2], return_dict=False)[1]
    alone = ours(**{k: (v[:1] if isinstance(v, torch.Tensor) and v.ndim else
                        [c[:1] for c in v] if isinstance(v, list) else
                        {n: t[:1] for n, t in v.items()} if isinstance(v, dict) else v) for k, v in inputs.items()},
                 control_type=kind[:1], control_type_idx=[2], return_dict=False)[1]
    assert (whole[:1] - alone).abs().max() > 1e-4


@torch.no_grad()
def test_multi_union_model_matches_diffusers():
    pairs = [cf.union_controlnet(seed=5 + k) for k in range(2)]
    theirs = _DiffusersMultiUnion([p[0] for p in pairs])
    ours = kernel.component("MultiControlNetUnionModel")([p[1] for p in pairs])
    inputs = _model_inputs()
    images = inputs.pop("controlnet_cond")
    kinds = [p[1].control_type_of([m], 2) for p, m in zip(pairs, (1, 4))]
    call = dict(controlnet_cond=[images, images], control_type=kinds, control_type_idx=[[1], [4]],
                conditioning_scale=[0.5, 0.0])  # the second net is skipped
    a = theirs(**inputs, **call, return_dict=False)
    b = ours(**inputs, **call, return_dict=False)
    for x, y in zip([*a[0], a[1]], [*b[0], b[1]]):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


def test_model_folder_round_trips_with_diffusers(tmp_path):
    theirs, ours = cf.union_controlnet()
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.component("ControlNetUnionModel").from_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.ControlNetUnionModel.from_pretrained(tmp_path / "ours")
    for a, b in ((theirs, loaded), (back, ours)):
        for (ka, va), (kb, vb) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
            assert ka == kb and torch.equal(va, vb)
    import json

    configs = [json.loads((tmp_path / side / "config.json").read_text()) for side in ("theirs", "ours")]
    assert [{k: v for k, v in c.items() if not k.startswith("_")} for c in configs][0] == \
        {k: v for k, v in configs[1].items() if not k.startswith("_")}
    assert configs[1]["_class_name"] == "ControlNetUnionModel"


def test_from_unet_copies_the_encoder_half():
    _, unet = fx.unet(xl=True)
    net = kernel.component("ControlNetUnionModel").from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    assert net.config.num_trans_channel == unet.config.block_out_channels[0]
    torch.testing.assert_close(net.down_blocks.state_dict(), unet.down_blocks.state_dict(), atol=0, rtol=0)


# ---------------------------------------------------------------------------- the pipelines
@functools.lru_cache(maxsize=None)
def _parts(nets: int = 1):
    theirs, ours = fx.xl_components()
    pairs = [cf.union_controlnet(seed=5 + k) for k in range(nets)]
    theirs["controlnet"] = pairs[0][0] if nets == 1 else _DiffusersMultiUnion([p[0] for p in pairs])
    ours["controlnet"] = pairs[0][1] if nets == 1 else [p[1] for p in pairs]
    return theirs, ours


def _pair(name: str, nets: int = 1):
    theirs_parts, ours_parts = _parts(nets)
    theirs, ours = getattr(diffusers, name)(**theirs_parts), kernel.component(name)(**ours_parts)
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _inputs(name: str, images: int = 1, **kwargs):
    control = [cf.control_image(SIZE, seed=7 + k) for k in range(images)]
    call = dict(prompt="a photo of a cat", num_inference_steps=3, output_type="np", control_image=control,
                control_mode=[2, 4, 0][:images])
    if name != TEXT:
        call.update(image=fx.image(SIZE, SIZE, seed=1), strength=0.7)
    if name == INPAINT:
        call["mask_image"] = fx.mask(SIZE, SIZE)
    return {**call, **kwargs}


def _same(theirs, ours, **call):
    a = theirs(generator=fx.gen(0), **call).images
    b = ours(generator=fx.gen(0), **call).images
    fx.assert_images_close(a, b, atol=1e-3)
    return b


CASES = {  # name, images, call
    "text": (TEXT, 1, dict(negative_prompt="blurry")),
    "text-one-image-not-listed": (TEXT, 1, dict(control_image=cf.control_image(SIZE), control_mode=3,
                                                controlnet_conditioning_scale=0.6)),
    "text-two-images-scales-windows": (TEXT, 2, dict(controlnet_conditioning_scale=[0.5, 1.2],
                                                     control_guidance_start=[0.0, 0.4], control_guidance_end=[0.6, 1.0])),
    "text-guess-no-cfg": (TEXT, 1, dict(guess_mode=True, guidance_scale=1.0)),
    "text-batch": (TEXT, 1, dict(prompt=["a cat", "a dog"], num_images_per_prompt=2)),
    "image": (IMAGE, 1, {}),
    "image-two-images": (IMAGE, 2, dict(controlnet_conditioning_scale=0.9, control_guidance_end=0.5)),
    "inpaint": (INPAINT, 1, dict(controlnet_conditioning_scale=0.7)),
    "inpaint-window-denoising-end": (INPAINT, 2, dict(num_inference_steps=6, strength=0.9, denoising_end=0.6,
                                                      control_guidance_start=0.2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_union_pipelines_match_diffusers(case):
    name, images, call = CASES[case]
    theirs, ours = _pair(name)
    _same(theirs, ours, **_inputs(name, images, **call))


@pytest.mark.parametrize("name", [TEXT, IMAGE])
def test_multi_union_pipelines_match_diffusers(name):
    theirs, ours = _pair(name, nets=2)
    assert type(ours.controlnet).__name__ == "MultiControlNetUnionModel"
    _same(theirs, ours, **_inputs(name, 2, controlnet_conditioning_scale=[0.7, 1.1], control_guidance_end=[1.0, 0.5]))


def test_modes_and_control_steer_and_scale_zero_is_the_plain_pipeline():
    _, ours = _pair(TEXT)
    plain = kernel.component("StableDiffusionXLPipeline")(**{k: v for k, v in _parts()[1].items() if k != "controlnet"})
    plain.set_progress_bar_config(disable=True)
    call = _inputs(TEXT)
    steered = ours(generator=fx.gen(0), **call).images
    other_mode = ours(generator=fx.gen(0), **{**call, "control_mode": [5]}).images
    off = ours(generator=fx.gen(0), **{**call, "controlnet_conditioning_scale": 0.0}).images
    base = plain(generator=fx.gen(0), height=SIZE, width=SIZE,
                 **{k: v for k, v in call.items() if k not in ("control_image", "control_mode")}).images
    assert np.abs(steered - base).max() > 0.05 and np.abs(steered - other_mode).max() > 1e-3
    np.testing.assert_array_equal(off, base)


def test_guess_mode_with_guidance_runs_and_differs():
    """Diffusers' union pipelines fail here (their control modes keep the negative rows); ours run the net on the
    positive rows only."""
    _, ours = _pair(TEXT)
    call = _inputs(TEXT)
    guessed = ours(generator=fx.gen(0), guess_mode=True, **call).images
    assert np.isfinite(guessed).all() and np.abs(guessed - ours(generator=fx.gen(0), **call).images).max() > 1e-3


def test_pipeline_folder_round_trips_with_diffusers(tmp_path):
    theirs, ours = _pair(TEXT)
    call = _inputs(TEXT, 2, num_inference_steps=2)
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.StableDiffusionXLControlNetUnionPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    fx.assert_images_close(back(generator=fx.gen(0), **call).images, ours(generator=fx.gen(0), **call).images)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.load(str(tmp_path / "theirs"))
    assert type(loaded).__name__ == TEXT and type(loaded.controlnet).__name__ == "ControlNetUnionModel"
    loaded.set_progress_bar_config(disable=True)
    fx.assert_images_close(theirs(generator=fx.gen(0), **call).images, loaded(generator=fx.gen(0), **call).images)


def test_multi_union_folder_written_by_diffusers_loads_here(tmp_path):
    """Diffusers writes a MultiControlNetUnionModel pipeline (controlnet/, controlnet_1/) but cannot load it back
    (its top-level module does not export the class); here it loads, and ours saves the same layout."""
    theirs, _ = _pair(TEXT, nets=2)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.load(str(tmp_path / "theirs"))
    assert type(loaded.controlnet).__name__ == "MultiControlNetUnionModel" and len(loaded.controlnet.nets) == 2
    loaded.set_progress_bar_config(disable=True)
    call = _inputs(TEXT, 2, num_inference_steps=2)
    expected = theirs(generator=fx.gen(0), **call).images
    fx.assert_images_close(expected, loaded(generator=fx.gen(0), **call).images)
    loaded.save_pretrained(tmp_path / "ours")
    again = kernel.load(str(tmp_path / "ours"))
    again.set_progress_bar_config(disable=True)
    fx.assert_images_close(expected, again(generator=fx.gen(0), **call).images)


def test_auto_pipeline_picks_the_union_variant():
    _, ours = _pair(TEXT)
    image = kernel.component("AutoPipelineForImage2Image").from_pipe(ours)
    assert type(image).__name__ == IMAGE and image.controlnet is ours.controlnet


BAD = {
    "no-image": (dict(control_image=None), "control_image"),
    "no-mode": (dict(control_mode=None), "control_mode"),
    "mode-range": (dict(control_mode=[6]), "control_mode"),
    "mode-count": (dict(control_mode=[1, 2]), "control_mode"),
    "scale-count": (dict(controlnet_conditioning_scale=[1.0, 1.0]), "controlnet_conditioning_scale"),
    "window": (dict(control_guidance_start=0.5, control_guidance_end=0.5), "control_guidance_start"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_union_arguments_raise_value_error_naming_them(case):
    _, ours = _pair(TEXT)
    overrides, argument = BAD[case]
    with pytest.raises(ValueError, match=argument):
        ours(**_inputs(TEXT, **overrides))


def test_multi_union_needs_one_image_per_net_and_plain_nets_are_refused():
    _, ours = _pair(TEXT, nets=2)
    with pytest.raises(ValueError, match="control_image"):
        ours(**_inputs(TEXT, 3))
    _, parts = fx.xl_components()
    with pytest.raises(ValueError, match="ControlNetUnionModel"):
        kernel.component(TEXT)(**parts, controlnet=cf.our_controlnet(xl=True))
    with pytest.raises(ValueError, match="ControlNetModel"):
        kernel.component("StableDiffusionXLControlNetPipeline")(**parts, controlnet=cf.our_union_controlnet())
