"""PixArt pipelines against Diffusers (the oracle): tiny components saved by Diffusers, loaded with kernel.load."""

import numpy as np
import pytest
import torch

import kernel
from kernel_pixart import ASPECT_RATIO_256_BIN
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

diffusers = pytest.importorskip("diffusers")


def _components(sample_size: int):
    torch.manual_seed(0)
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=sample_size, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, latent_channels=4, norm_num_groups=1)
    tok = tiny_t5_tokenizer()
    return dict(transformer=transformer, vae=vae, scheduler=diffusers.DPMSolverMultistepScheduler(),
                text_encoder=tiny_t5_encoder(tok, d_model=32, seed=1), tokenizer=tok)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for name, cls, size in (("alpha", "PixArtAlphaPipeline", 32), ("alpha-1024", "PixArtAlphaPipeline", 128),
                            ("sigma", "PixArtSigmaPipeline", 32)):
        theirs = getattr(diffusers, cls)(**_components(size))
        path = tmp_path_factory.mktemp(name)
        theirs.save_pretrained(path)
        out[name] = (path, theirs)
    return out


def _run(pipe, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    pipe.set_progress_bar_config(disable=True)
    return pipe(output_type="np", max_sequence_length=12, **kwargs).images


@pytest.mark.parametrize("variant,kwargs", [
    ("alpha", dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2, use_resolution_binning=False)),
    ("alpha", dict(prompt=["a cat", "The Dog "], negative_prompt="blurry", height=16, width=40, num_inference_steps=3,
                   use_resolution_binning=False)),
    ("alpha-1024", dict(prompt="a cat", height=24, width=40, num_inference_steps=2, use_resolution_binning=False,
                        num_images_per_prompt=2)),
    ("sigma", dict(prompt="a dog", height=40, width=24, num_inference_steps=2, guidance_scale=1.0,
                   use_resolution_binning=False)),
], ids=["alpha", "alpha-batch-nonsquare", "alpha-size-conditioned", "sigma-no-cfg"])
def test_text_to_image_matches_diffusers(folders, variant, kwargs):
    path, theirs = folders[variant]
    ours = kernel.load(path)
    assert type(ours).__name__ == type(theirs).__name__
    np.testing.assert_allclose(_run(ours, **kwargs), _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_resolution_binning_matches_diffusers(folders, monkeypatch):
    # Shrink the 256px bins (sample_size=32) by 8 so the tiny model stays fast: both libraries read the same table.
    small = {k: (v[0] // 8, v[1] // 8) for k, v in ASPECT_RATIO_256_BIN.items()}
    import diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha as ref_module
    import kernel_pixart.pipelines as our_module

    monkeypatch.setattr(ref_module, "ASPECT_RATIO_256_BIN", {k: [float(a), float(b)] for k, (a, b) in small.items()})
    monkeypatch.setitem(our_module.BINS_BY_SAMPLE_SIZE, 32, small)
    path, theirs = folders["alpha"]
    ours = kernel.load("pixart", path)
    kwargs = dict(prompt="a cat", height=24, width=40, num_inference_steps=2)
    got = _run(ours, **kwargs)
    assert got.shape == (1, 24, 40, 3)
    np.testing.assert_allclose(got, _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_embeds_callback_and_reverse_direction(folders, tmp_path):
    path, theirs = folders["sigma"]
    ours = kernel.load("pixart-sigma", path)
    enc = ours.encode_prompt("A Cat", max_sequence_length=12)
    ref = theirs.encode_prompt("A Cat", max_sequence_length=12)
    for a, b in zip(enc, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    seen = []
    kwargs = dict(prompt_embeds=enc[0], prompt_attention_mask=enc[1], negative_prompt_embeds=enc[2],
                  negative_prompt_attention_mask=enc[3], negative_prompt=None, height=32, width=32,
                  num_inference_steps=2, use_resolution_binning=False)
    got = _run(ours, callback_on_step_end=lambda p, i, t, d: seen.append(i) or {}, **kwargs)
    assert seen == [0, 1]
    ours.save_pretrained(tmp_path)
    back = diffusers.PixArtSigmaPipeline.from_pretrained(tmp_path)
    np.testing.assert_allclose(got, _run(back, **kwargs), atol=1e-3, rtol=0)


def test_single_step_runs(folders):
    # Diffusers' PixArt indexes a second scheduler output for one step, which DPM-Solver does not return.
    ours = kernel.load(folders["sigma"][0])
    image = _run(ours, prompt="a dog", height=32, width=32, num_inference_steps=1, use_resolution_binning=False)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_bad_inputs(folders):
    ours = kernel.load(folders["alpha"][0])
    with pytest.raises(ValueError, match="height must be a positive multiple of 4"):
        ours(prompt="a", height=30, width=32, use_resolution_binning=False)
    with pytest.raises(ValueError, match="max_sequence_length"):
        ours(prompt="a", height=32, width=32, max_sequence_length=1000, use_resolution_binning=False)
    enc = ours.encode_prompt("a", max_sequence_length=12)
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        ours(prompt_embeds=enc[0], height=32, width=32, use_resolution_binning=False)
    with pytest.raises(ValueError, match="sample_size"):
        kernel.load(folders["alpha"][0], transformer=diffusers.PixArtTransformer2DModel(
            sample_size=8, num_layers=1, num_attention_heads=3, attention_head_dim=8, cross_attention_dim=24,
            caption_channels=32))(prompt="a")
