"""IP-Adapter on Stable Diffusion 1.x pipelines against Diffusers: images, precomputed embeddings, scales, several
adapters, Plus / Full-face projections, image-to-image, inpainting, PAG, region masks, unloading."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ip_fixtures as ipf  # noqa: E402
from ip_fixtures import single_thread  # noqa: E402,F401

from kernel_ip_adapter import IPAdapterAttnProcessor, IPAdapterMaskProcessor, ip_processors  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _loaded(kinds=("ip",), name=None, **extra):
    d, o = ipf.pipelines(name=name, **extra)
    states = [ipf.random_ip_adapter(d.unet, kind, seed=i) for i, kind in enumerate(kinds)]
    for p in (d, o):
        p.load_ip_adapter(states if len(states) > 1 else states[0], subfolder=None, weight_name=[None] * len(states),
                          image_encoder_folder=None)
    return d, o


@pytest.mark.parametrize("kind", ["ip", "plus", "full"])
def test_image_prompt_matches_diffusers(kind):
    d, o = _loaded((kind,))
    image = ipf.ip_image()
    ours = ipf.run(o, ip_adapter_image=image)
    ipf.assert_close(ours, ipf.run(d, ip_adapter_image=image))
    _, plain = ipf.pipelines()
    assert np.abs(ours - ipf.run(plain)).max() > 1e-2, "the image prompt must change the picture"


def test_batches_and_images_per_prompt_match_diffusers():
    d, o = _loaded(("plus",))
    call = dict(prompt=["a cat", "a dog"], negative_prompt=["dark", "blurry"], num_images_per_prompt=2,
                ip_adapter_image=ipf.ip_image(1))
    ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call))


@pytest.mark.parametrize("kind", ["ip", "plus"])
def test_precomputed_embeds_with_and_without_the_negative_half(kind):
    d, o = _loaded((kind,))
    image = ipf.ip_image()
    embeds = o.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
    theirs = d.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
    assert len(embeds) == 1 and embeds[0].shape == theirs[0].shape
    torch.testing.assert_close(embeds[0], theirs[0], atol=1e-6, rtol=0)
    # [negative; positive] with classifier-free guidance: the same picture as the image itself
    from_embeds = ipf.run(o, ip_adapter_image_embeds=embeds)
    ipf.assert_close(from_embeds, ipf.run(o, ip_adapter_image=image), atol=1e-6)
    ipf.assert_close(from_embeds, ipf.run(d, ip_adapter_image_embeds=theirs))
    # positive rows only without guidance
    positive = [embeds[0].chunk(2)[1]]
    ours = ipf.run(o, ip_adapter_image_embeds=positive, guidance_scale=1.0)
    ipf.assert_close(ours, ipf.run(d, ip_adapter_image_embeds=positive, guidance_scale=1.0))
    ipf.assert_close(ours, ipf.run(o, ip_adapter_image=image, guidance_scale=1.0), atol=1e-6)


@pytest.mark.parametrize("scale", [0.5, {"down": {"block_1": [0.0]}, "up": {"block_0": [0.0, 1.0]}}, {"up": 0.7}],
                         ids=["float", "per-block", "up-only"])
def test_scales_match_diffusers(scale):
    d, o = _loaded()
    for p in (d, o):
        p.set_ip_adapter_scale(scale)
    image = ipf.ip_image()
    ipf.assert_close(ipf.run(o, ip_adapter_image=image), ipf.run(d, ip_adapter_image=image))
    ours = {n: p.scale for n, p in ip_processors(o.unet).items()}
    theirs = {k[: -len(".processor")]: p.scale for k, p in d.unet.attn_processors.items() if hasattr(p, "to_k_ip")}
    assert ours == theirs


def test_scale_zero_gives_the_plain_pipeline_exactly():
    _, o = _loaded(("plus",))
    _, plain = ipf.pipelines()
    o.set_ip_adapter_scale(0.0)
    np.testing.assert_array_equal(ipf.run(o, ip_adapter_image=ipf.ip_image()), ipf.run(plain))


def test_two_adapters_with_their_own_scales_match_diffusers():
    d, o = _loaded(("ip", "plus"))
    for p in (d, o):
        p.set_ip_adapter_scale([0.7, {"up": {"block_0": [1.0, 0.0]}}])
    images = [ipf.ip_image(0), [ipf.ip_image(1), ipf.ip_image(2)]]  # the second adapter gets two images
    ours = ipf.run(o, ip_adapter_image=images)
    ipf.assert_close(ours, ipf.run(d, ip_adapter_image=images))
    assert o.unet.encoder_hid_proj.num_ip_adapters == 2
    embeds = o.prepare_ip_adapter_image_embeds(images, None, "cpu", 1, True)
    assert [e.shape[:2] for e in embeds] == [(2, 1), (2, 2)]
    ipf.assert_close(ipf.run(o, ip_adapter_image_embeds=embeds), ours, atol=1e-6)


@pytest.mark.parametrize("name", ["StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"])
def test_image_to_image_and_inpainting_match_diffusers(name):
    d, o = _loaded(("ip",), name=name)
    call = dict(image=ipf.fx.image(32, 32), strength=0.8, ip_adapter_image=ipf.ip_image())
    call.pop("height", None)
    if "Inpaint" in name:
        call["mask_image"] = ipf.fx.mask(32, 32)
    base = {k: v for k, v in ipf.CALL.items() if k not in ("height", "width")}
    ipf.assert_close(o(generator=ipf.fx.gen(0), **base, **call).images, d(generator=ipf.fx.gen(0), **base, **call).images)


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_perturbed_attention_guidance_composes(guidance_scale):
    d, o = _loaded(("plus",), name="StableDiffusionPAGPipeline", pag_applied_layers=["mid", "down_blocks.1"])
    call = dict(ip_adapter_image=ipf.ip_image(), pag_scale=2.0, guidance_scale=guidance_scale)
    ours = ipf.run(o, **call)
    ipf.assert_close(ours, ipf.run(d, **call))
    # PAG swaps self-attention only: the IP processors sit in the cross-attention layers untouched
    assert all(isinstance(p, IPAdapterAttnProcessor) for p in ip_processors(o.unet).values())


def test_region_masks_match_diffusers():
    import diffusers.image_processor as dip
    from PIL import Image

    left, right = Image.new("L", (32, 32), 0), Image.new("L", (32, 32), 0)
    left.paste(255, (0, 0, 16, 32))
    right.paste(255, (16, 0, 32, 32))
    masks = IPAdapterMaskProcessor().preprocess([left, right], height=32, width=32)
    theirs = dip.IPAdapterMaskProcessor().preprocess([left, right], height=32, width=32)
    torch.testing.assert_close(masks, theirs, atol=0, rtol=0)
    d, o = _loaded(("plus",))
    for p in (d, o):
        p.set_ip_adapter_scale([[0.8, 0.6]])
    call = dict(ip_adapter_image=[[ipf.ip_image(0), ipf.ip_image(1)]],
                cross_attention_kwargs={"ip_adapter_masks": [masks.reshape(1, 2, 32, 32)]})
    ours = ipf.run(o, **call)
    ipf.assert_close(ours, ipf.run(d, **call))
    unmasked = dict(call, cross_attention_kwargs=None)
    o.set_ip_adapter_scale(0.7)
    assert np.abs(ipf.run(o, **unmasked) - ours).max() > 1e-3
    for scale in ([[0.8]], [[0.8, 0.6, 0.1]]):  # per-image scales must match the masks
        o.set_ip_adapter_scale(scale)
        with pytest.raises(ValueError, match="scales for 2 masks"):
            ipf.run(o, **call)


def test_unload_gives_back_the_exact_pipeline():
    d, o = ipf.pipelines()
    base = ipf.run(o)
    processors = dict(o.unet.attn_processors)
    keys, config = set(o.unet.state_dict()), dict(o.unet.config)
    o.load_ip_adapter([ipf.random_ip_adapter(d.unet, "ip"), ipf.random_ip_adapter(d.unet, "plus", seed=1)],
                      subfolder=None, weight_name=[None, None], image_encoder_folder=None)
    assert o.unet.config.encoder_hid_dim_type == "ip_image_proj"
    assert any(".processor.to_k_ip.1." in k for k in o.unet.state_dict())
    assert np.abs(ipf.run(o, ip_adapter_image=[ipf.ip_image(), ipf.ip_image(1)]) - base).max() > 1e-2
    o.unload_ip_adapter()
    np.testing.assert_array_equal(ipf.run(o), base)
    assert o.unet.encoder_hid_proj is None and dict(o.unet.config) == config
    assert set(o.unet.state_dict()) == keys
    assert all(o.unet.attn_processors[k] is v for k, v in processors.items())
    assert o.image_encoder is ipf.image_encoder()[0], "an image encoder the pipeline was given stays"
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        ipf.run(o, ip_adapter_image=ipf.ip_image())


def test_loading_again_replaces_the_adapters():
    d, o = _loaded(("ip", "plus"))
    state = ipf.random_ip_adapter(d.unet, "ip", seed=5)
    for p in (d, o):
        p.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    assert o.unet.encoder_hid_proj.num_ip_adapters == 1
    image = ipf.ip_image()
    ipf.assert_close(ipf.run(o, ip_adapter_image=image), ipf.run(d, ip_adapter_image=image))
    o.unload_ip_adapter()
    _, plain = ipf.pipelines()
    np.testing.assert_array_equal(ipf.run(o), ipf.run(plain))


def test_callback_ending_guidance_drops_the_negative_image_rows_too():
    """Diffusers' CFG cutoff callback halves the prompt rows; the image rows live in the same Conditioning and
    follow (Diffusers itself would keep feeding both image halves), giving the CFG window as a setting."""
    import kernel
    from diffusers.callbacks import SDCFGCutoffCallback

    _, o = _loaded(("ip",))
    call = dict(ip_adapter_image=ipf.ip_image(), num_inference_steps=4)
    ours = ipf.run(o, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5), **call)
    o.guider = kernel.component("ClassifierFreeGuidance")(guidance_scale=7.5, stop=0.75)  # steps 0-2 guided
    np.testing.assert_array_equal(ours, ipf.run(o, **call))


def test_lora_and_ip_adapter_compose_like_diffusers():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lora" / "tests"))
    import lora_fixtures as lf

    lf.allow_transformers_peft()
    d, o = ipf.pipelines()
    lora = lf.prefixed("unet", lf.random_lora(o.unet, seed=3))
    state = ipf.random_ip_adapter(d.unet, "plus")
    for p in (d, o):
        p.load_lora_weights(lora)
        p.load_ip_adapter(state, None, None, image_encoder_folder=None)
    call = dict(ip_adapter_image=ipf.ip_image(), cross_attention_kwargs={"scale": 0.5})
    ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call))
    o.unload_ip_adapter()
    o.unload_lora_weights()
    _, plain = ipf.pipelines()
    np.testing.assert_array_equal(ipf.run(o), ipf.run(plain))
