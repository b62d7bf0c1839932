"""Flux pipelines against Diffusers (the oracle): tiny components saved by Diffusers, loaded with kernel.load."""

import logging

import numpy as np
import pytest
import torch

import kernel
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

diffusers = pytest.importorskip("diffusers")


def _components(guidance: bool):
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                                  use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return dict(transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
                    use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256),
                text_encoder=tiny_clip_text_model(tok, seed=1), tokenizer=tok,
                text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2), tokenizer_2=t5_tok)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for name, guidance in (("dev", True), ("schnell", False)):
        theirs = diffusers.FluxPipeline(**_components(guidance))
        path = tmp_path_factory.mktemp(name)
        theirs.save_pretrained(path)
        out[name] = (path, theirs)
    return out


def _run(pipe, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    pipe.set_progress_bar_config(disable=True)
    return pipe(output_type="np", max_sequence_length=16, **kwargs).images


@pytest.mark.parametrize("variant,kwargs", [
    ("dev", dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2, guidance_scale=4.0)),
    ("dev", dict(prompt=["a cat", "the dog"], height=16, width=48, num_inference_steps=3, num_images_per_prompt=2)),
    ("schnell", dict(prompt="a dog", prompt_2="a cat", height=32, width=16, num_inference_steps=2)),
    ("schnell", dict(prompt="a dog", negative_prompt="cat", true_cfg_scale=2.0, height=32, width=32,
                     num_inference_steps=2)),
], ids=["dev-square", "dev-batch-nonsquare", "schnell-prompt2", "schnell-true-cfg"])
def test_text_to_image_matches_diffusers(folders, variant, kwargs):
    path, theirs = folders[variant]
    ours = kernel.load("flux", path)
    np.testing.assert_allclose(_run(ours, **kwargs), _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_img2img_matches_diffusers(folders):
    path, _ = folders["dev"]
    theirs = diffusers.FluxImg2ImgPipeline.from_pretrained(path)
    ours = kernel.component("FluxImg2ImgPipeline").from_pretrained(path)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for strength, steps in ((0.6, 4), (1.0, 2)):
        kwargs = dict(prompt=["a cat", "a dog"], image=image, strength=strength, height=32, width=32,
                      num_inference_steps=steps)
        np.testing.assert_allclose(_run(ours, **kwargs), _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_saved_by_us_loads_in_diffusers_and_embeds(folders, tmp_path):
    path, theirs = folders["dev"]
    ours = kernel.load(path)
    ours.save_pretrained(tmp_path)
    back = diffusers.FluxPipeline.from_pretrained(tmp_path)
    embeds, pooled, ids = ours.encode_prompt("a cat", max_sequence_length=16)
    ref = theirs.encode_prompt("a cat", max_sequence_length=16)
    for a, b in zip((embeds, pooled, ids), ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    kwargs = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=32, width=32, num_inference_steps=2)
    np.testing.assert_allclose(_run(back, **kwargs), _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_bad_inputs(folders, caplog):
    ours = kernel.load(folders["schnell"][0])
    with pytest.raises(ValueError, match="multiple of 4"):
        ours(prompt="a", height=30, width=32)
    with pytest.raises(ValueError, match="max_sequence_length"):
        ours(prompt="a", height=32, width=32, max_sequence_length=600)
    embeds, pooled, _ = ours.encode_prompt("a", max_sequence_length=16)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        ours(prompt_embeds=embeds, height=32, width=32)
    with pytest.raises(ValueError, match="pooled_projection_dim"):
        ours(prompt_embeds=embeds, pooled_prompt_embeds=pooled[:, :7], height=32, width=32)
    with pytest.raises(ValueError, match="does not match"):
        ours(prompt_embeds=embeds, pooled_prompt_embeds=torch.cat([pooled] * 2), height=32, width=32)
    with caplog.at_level(logging.WARNING):
        _run(ours, prompt="a", height=32, width=32, num_inference_steps=1, guidance_scale=5.0)
    assert "guidance_scale=5.0 is ignored" in caplog.text
