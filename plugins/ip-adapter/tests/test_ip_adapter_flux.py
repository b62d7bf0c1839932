"""IP-Adapter on the Flux pipelines against Diffusers' ``FluxIPAdapterMixin``: XLabs-layout files, images, precomputed
and negative embeddings with true CFG, per-block scales, two adapters, image-to-image, the bare transformer as an
Adapter, unloading and bad input."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ip_fixtures as ipf  # noqa: E402
from ip_fixtures import single_thread  # noqa: E402,F401

import kernel  # noqa: E402
import kernel_contracts  # noqa: E402
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer  # noqa: E402
from kernel_ip_adapter import FluxIPAdapter, FluxIPAdapterAttnProcessor, flux_ip_processors  # noqa: E402
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer  # noqa: E402

diffusers = ipf.diffusers
CONTRACT_COVERS = ["FluxIPAdapter"]
pytestmark = pytest.mark.usefixtures("single_thread")
CALL = dict(prompt="a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
            max_sequence_length=16)
_CACHE: dict = {}


def _components() -> dict:
    """Tiny Diffusers Flux components (2 double-, 1 single-stream block) with the tiny CLIP image encoder."""
    if "parts" not in _CACHE:
        torch.manual_seed(0)
        transformer = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
            guidance_embeds=True)
        with torch.no_grad():
            for p in transformer.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        torch.manual_seed(0)
        vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4),
                                      down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                                      norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                                      shift_factor=0.0609, scaling_factor=1.5035)
        tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
        encoder, extractor = ipf.image_encoder()
        _CACHE["parts"] = dict(
            transformer=transformer.eval(), vae=vae.eval(), text_encoder=tiny_clip_text_model(tok, seed=1),
            tokenizer=tok, text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2), tokenizer_2=t5_tok,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=16,
                                                                max_image_seq_len=256),
            image_encoder=encoder, feature_extractor=extractor)
    return _CACHE["parts"]


def pipelines(name: str = "FluxPipeline", with_encoder: bool = True):
    """(Diffusers pipeline, ours) with equal weights; each has its own transformer."""
    parts = dict(_components())
    parts["transformer"] = copy.deepcopy(parts["transformer"])
    if not with_encoder:
        parts.update(image_encoder=None, feature_extractor=None)
    ours = dict(parts, transformer=ipf.fx.ours_of(parts["transformer"]), vae=ipf.fx.ours_of(parts["vae"]),
                scheduler=kernel.component("FlowMatchEulerDiscreteScheduler").from_config(dict(parts["scheduler"].config)))
    d, o = getattr(diffusers, name)(**parts), kernel.component(name)(**ours)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    return d, o


def xlabs_ip_adapter(transformer, seed: int = 0, tokens: int = 4) -> dict[str, torch.Tensor]:
    """A seeded random Flux IP-Adapter in XLabs' file layout for a Diffusers Flux transformer."""
    g = torch.Generator().manual_seed(seed)
    width, inner, embed = transformer.config.joint_attention_dim, transformer.inner_dim, ipf.VISION["projection_dim"]
    state = {"ip_adapter_proj_model.proj.weight": ipf._randn(g, tokens * width, embed),
             "ip_adapter_proj_model.proj.bias": ipf._randn(g, tokens * width),
             "ip_adapter_proj_model.norm.weight": 1 + ipf._randn(g, width, scale=0.1),
             "ip_adapter_proj_model.norm.bias": ipf._randn(g, width, scale=0.1)}
    for i in range(transformer.config.num_layers):
        for kv in ("k", "v"):
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.weight"] = ipf._randn(g, inner, width)
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.bias"] = ipf._randn(g, inner)
    return state


def nested(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The same adapter in Diffusers' nested layout (what its ``load_ip_adapter`` takes as a dict)."""
    out: dict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        if key.startswith("ip_adapter_proj_model."):
            out["image_proj"][key[len("ip_adapter_proj_model."):]] = value
        else:
            i, kv, kind = key.split(".")[1], key.split("_proj.")[0][-1], key.rsplit(".", 1)[1]
            out["ip_adapter"][f"{i}.to_{kv}_ip.{kind}"] = value
    return out


@pytest.fixture(scope="module")
def ip_file(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("flux-ip")
    save_file(xlabs_ip_adapter(_components()["transformer"]), str(folder / "ip_adapter.safetensors"))
    return folder


def _loaded(ip_file, name="FluxPipeline"):
    d, o = pipelines(name)
    for p in (d, o):
        p.load_ip_adapter(ip_file, weight_name="ip_adapter.safetensors")
    return d, o


def run(pipe, seed: int = 0, **call) -> np.ndarray:
    return pipe(generator=torch.Generator().manual_seed(seed), **{**CALL, **call}).images


def test_image_prompt_with_and_without_true_cfg_matches_diffusers(ip_file):
    d, o = _loaded(ip_file)
    image, other = ipf.ip_image(0), ipf.ip_image(1)
    ours = run(o, ip_adapter_image=image)
    ipf.assert_close(ours, run(d, ip_adapter_image=image))
    _, plain = pipelines()
    assert np.abs(ours - run(plain)).max() > 1e-2, "the image prompt must change the picture"
    # true CFG: the negative pass takes the black image by default, or negative_ip_adapter_image
    for extra in ({}, {"negative_ip_adapter_image": other}):
        call = dict(ip_adapter_image=image, negative_prompt="blurry", true_cfg_scale=3.0, **extra)
        ipf.assert_close(run(o, **call), run(d, **call))
    assert all(isinstance(p, FluxIPAdapterAttnProcessor) for p in flux_ip_processors(o.transformer).values())
    assert len(flux_ip_processors(o.transformer)) == 2  # the double-stream blocks only


def test_embeddings_batches_and_per_block_scales_match_diffusers(ip_file):
    d, o = _loaded(ip_file)
    image = ipf.ip_image(2)
    embeds = o.prepare_ip_adapter_image_embeds(image, None, "cpu", 1)
    theirs = d.prepare_ip_adapter_image_embeds(image, None, "cpu", 1)
    torch.testing.assert_close(embeds[0], theirs[0], atol=1e-6, rtol=0)
    negative = o.prepare_ip_adapter_image_embeds(ipf.ip_image(3), None, "cpu", 1)
    call = dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, negative_prompt=["blurry", "dark"],
                true_cfg_scale=2.0)
    from_embeds = run(o, ip_adapter_image_embeds=embeds, negative_ip_adapter_image_embeds=negative, **call)
    ipf.assert_close(from_embeds, run(d, ip_adapter_image_embeds=embeds, negative_ip_adapter_image_embeds=negative, **call))
    ipf.assert_close(from_embeds, run(o, ip_adapter_image=image, negative_ip_adapter_image=ipf.ip_image(3), **call),
                     atol=1e-6)
    # batched classifier-free guidance stacks [negative; positive] image embeddings like the prompts
    o.guider = kernel.component("ClassifierFreeGuidance")(guidance_scale=2.0)
    ipf.assert_close(run(o, ip_adapter_image_embeds=embeds, negative_ip_adapter_image_embeds=negative, **call),
                     from_embeds, atol=1e-5)
    o.guider = None
    for p in (d, o):
        p.set_ip_adapter_scale([0.3, 1.5])  # one value per double-stream block
    assert [p.scale for p in flux_ip_processors(o.transformer).values()] == [[0.3], [1.5]]
    ipf.assert_close(run(o, ip_adapter_image=image), run(d, ip_adapter_image=image))
    o.set_ip_adapter_scale(0.0)
    _, plain = pipelines()
    np.testing.assert_array_equal(run(o, ip_adapter_image=image), run(plain))


def test_two_adapters_from_dicts_match_diffusers():
    d, o = pipelines()
    transformer = _components()["transformer"]
    states = [nested(xlabs_ip_adapter(transformer, seed=s)) for s in (4, 5)]
    for p in (d, o):
        p.load_ip_adapter(states, weight_name=[None, None])
        p.set_ip_adapter_scale([0.6, [1.0, 0.4]])
    images = [ipf.ip_image(0), [ipf.ip_image(1), ipf.ip_image(2)]]  # the second adapter gets two images
    ipf.assert_close(run(o, ip_adapter_image=images), run(d, ip_adapter_image=images))
    assert o.transformer.encoder_hid_proj.num_ip_adapters == 2


@pytest.mark.parametrize("name", ["FluxImg2ImgPipeline", "FluxInpaintPipeline"])
def test_image_to_image_and_inpainting_match_diffusers(ip_file, name):
    # (Diffusers' image-to-image and inpainting pipelines fail with two adapters and no negative image; ours do not)
    d, o = _loaded(ip_file, name)
    call = dict(image=ipf.fx.image(32, 32), strength=0.8, ip_adapter_image=ipf.ip_image())
    if name == "FluxInpaintPipeline":
        from kernel_contracts.testing import box_mask

        call["mask_image"] = box_mask(32, 32)
    ipf.assert_close(run(o, **call), run(d, **call))


def test_unload_restores_the_base_pipeline_and_removes_what_the_load_added(ip_file):
    _, o = pipelines(with_encoder=False)
    base = run(o)
    state = {k: v.clone() for k, v in o.transformer.state_dict().items()}
    encoder_folder = ip_file / "image_encoder"
    if not encoder_folder.exists():
        ipf.image_encoder()[0].save_pretrained(encoder_folder)
    o.load_ip_adapter(ip_file, weight_name="ip_adapter.safetensors",
                      image_encoder_pretrained_model_name_or_path=encoder_folder)
    assert o.image_encoder is not None and o.image_encoder.dtype == torch.float32
    assert o.feature_extractor.crop_size["height"] == ipf.VISION["image_size"]
    run(o, ip_adapter_image=ipf.ip_image())
    o.unload_ip_adapter()
    assert o.image_encoder is None and o.feature_extractor is None and not o.conditioning_hooks
    assert not hasattr(o.transformer, "encoder_hid_proj")
    after = o.transformer.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], v) for k, v in state.items())
    np.testing.assert_array_equal(run(o), base)


def test_bad_input_is_refused_and_leaves_the_pipeline_as_it_was(ip_file, tmp_path):
    _, o = pipelines()
    transformer = _components()["transformer"]
    with pytest.raises(ValueError, match="biases.*SD 1.5 / SDXL"):
        sd_like = {k: v for k, v in xlabs_ip_adapter(transformer).items() if not k.endswith("proj.bias")
                   or k.startswith("ip_adapter_proj_model")}
        o.load_ip_adapter(sd_like, weight_name=None)
    short = {k: v for k, v in xlabs_ip_adapter(transformer).items() if not k.startswith("double_blocks.1.")}
    with pytest.raises(ValueError, match="1 double-stream blocks .* this transformer has 2"):
        o.load_ip_adapter(short, weight_name=None)
    with pytest.raises(ValueError, match="no Flux IP-Adapter layout"):
        o.load_ip_adapter({"foo.weight": torch.zeros(2)}, weight_name=None)
    assert not flux_ip_processors(o.transformer) and not o.conditioning_hooks
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        run(o, ip_adapter_image=ipf.ip_image())
    o.load_ip_adapter(ip_file, weight_name="ip_adapter.safetensors")
    with pytest.raises(ValueError, match="an IP-Adapter is loaded"):
        run(o)
    with pytest.raises(ValueError, match=r"shaped \(rows, images, 24\)"):
        run(o, ip_adapter_image_embeds=[torch.zeros(1, 1, 7)])
    with pytest.raises(ValueError, match="not both"):
        run(o, ip_adapter_image=ipf.ip_image(), ip_adapter_image_embeds=[torch.zeros(1, 1, 24)])
    with pytest.raises(ValueError, match="per double-stream block"):
        o.set_ip_adapter_scale([1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="set_ip_adapter_scale"):
        o.set_ip_adapter_scale("strong")


def _transformer():
    return ipf.fx.ours_of(_components()["transformer"])


def _adapter():
    transformer = _components()["transformer"]
    return FluxIPAdapter([xlabs_ip_adapter(transformer, seed=0), nested(xlabs_ip_adapter(transformer, seed=1))])


def _inputs(model, batch_size, generator):
    width = ipf.VISION["projection_dim"]
    return dict(hidden_states=torch.randn(batch_size, 16, 16, generator=generator),
                encoder_hidden_states=torch.randn(batch_size, 5, 32, generator=generator),
                pooled_projections=torch.randn(batch_size, 32, generator=generator),
                timestep=torch.full((batch_size,), 0.5), guidance=torch.full((batch_size,), 3.5),
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3),
                joint_attention_kwargs={"ip_adapter_image_embeds": [torch.randn(batch_size, 1, width, generator=generator),
                                                                    torch.randn(batch_size, 2, width, generator=generator)]})


class TestFluxIPAdapterContract(kernel_contracts.AdapterContract):
    component = staticmethod(_adapter)
    contract_options = {"contract_model": _transformer, "contract_inputs": _inputs}


@torch.no_grad()
def test_bare_transformer_matches_diffusers_and_keeps_the_callers_dict():
    theirs = copy.deepcopy(_components()["transformer"])
    ours = _transformer()
    adapter = _adapter()
    theirs._load_ip_adapter_weights([nested(xlabs_ip_adapter(theirs, seed=0)), nested(xlabs_ip_adapter(theirs, seed=1))])
    adapter.apply(ours, 0.7)
    for p in theirs.attn_processors.values():
        if hasattr(p, "to_k_ip"):
            p.scale = [0.7, 0.7]
    x = _inputs(ours, 2, torch.Generator().manual_seed(0))
    extra = x["joint_attention_kwargs"]
    out = ours(**x).sample
    assert set(extra) == {"ip_adapter_image_embeds"}  # the pre-hook does not change the caller's dict
    torch.testing.assert_close(out, theirs(**{**x, "joint_attention_kwargs": dict(extra)}).sample, atol=1e-5, rtol=0)
    ip_keys = {k for k in theirs.state_dict() if "_ip." in k or k.startswith("encoder_hid_proj.")}
    assert ip_keys and ip_keys == {k for k in ours.state_dict() if "_ip." in k or k.startswith("encoder_hid_proj.")}
    assert isinstance(adapter, kernel.protocols.Adapter) and kernel.component("FluxIPAdapter") is FluxIPAdapter
