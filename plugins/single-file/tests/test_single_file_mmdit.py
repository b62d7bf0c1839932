"""SD3 and FLUX.1 single files (whole-pipeline and transformer-only) against Diffusers and the original folders."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sf_fixtures as fx  # noqa: E402
from sf_fixtures import one_thread  # noqa: E402,F401

import kernel  # noqa: E402
from kernel.checkpoints import Checkpoint, detect  # noqa: E402

diffusers = pytest.importorskip("diffusers")
ARGS = dict(prompt="a cat", num_inference_steps=2, height=32, width=32, max_sequence_length=16)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmdit-single")
    out = {}
    for kind in ("sd3", "flux-dev", "flux-schnell"):
        folder = fx.mmdit_folder(root / kind, kind)
        out[kind] = folder, fx.mmdit_single_file(folder, root / f"{kind}.safetensors", kind)
    return out


def test_sd3_matches_diffusers_single_file_and_folder(made, one_thread):
    folder, file = made["sd3"]
    assert detect(Checkpoint(file)) == "sd3.5-medium"  # dual attention and qk norm: the SD3.5 medium layout
    ours = kernel.load(str(file), config=str(folder))
    assert type(ours).__name__ == "StableDiffusion3Pipeline"
    assert all(not m.training for m in ours.components.values() if isinstance(m, torch.nn.Module))
    theirs = diffusers.StableDiffusion3Pipeline.from_single_file(str(file), config=str(folder))
    assert theirs.text_encoder_3.training  # Diffusers 0.42 leaves the single-file T5 in training mode (dropout on)
    theirs.text_encoder_3.eval()
    picture = fx.run(ours, **ARGS)
    fx.assert_close(picture, fx.run(theirs, **ARGS))
    fx.assert_close(picture, fx.run(diffusers.StableDiffusion3Pipeline.from_pretrained(folder), **ARGS))


@pytest.mark.parametrize("kind", ["flux-dev", "flux-schnell"])
def test_flux_matches_the_folder(made, kind, one_thread):
    # Diffusers' own FLUX converter assumes the full-size width (3072), so only the folder is the oracle here.
    folder, file = made[kind]
    assert detect(Checkpoint(file)) == kind
    ours = kernel.load(str(file), config=str(folder))
    assert type(ours).__name__ == "FluxPipeline" and not ours.text_encoder_2.training
    fx.assert_close(fx.run(ours, **ARGS), fx.run(diffusers.FluxPipeline.from_pretrained(folder), **ARGS))


@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_transformer_only_files(made, kind, tmp_path):
    folder, _ = made[kind]
    file = fx.mmdit_single_file(folder, tmp_path / "transformer.safetensors", kind, components=("transformer",))
    name = "SD3Transformer2DModel" if kind == "sd3" else "FluxTransformer2DModel"
    ours = kernel.component(name).from_single_file(str(file), config=str(folder), subfolder="transformer")
    ref = getattr(diffusers, name).from_pretrained(folder, subfolder="transformer").state_dict()
    assert not ours.training
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref[key]), key
    if kind == "sd3":
        theirs = diffusers.SD3Transformer2DModel.from_single_file(str(file), config=str(folder), subfolder="transformer")
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    # a whole pipeline from the transformer-only file: every other part comes from config=
    pipe = kernel.load(str(file), config=str(folder))
    assert torch.equal(pipe.transformer.proj_out.weight, ours.proj_out.weight)


def test_flux_autoencoder_file(made, tmp_path):
    folder, file = made["flux-dev"]
    from safetensors.torch import load_file, save_file

    ae = tmp_path / "ae.safetensors"  # Black Forest Labs ship the autoencoder alone, unprefixed
    save_file({k[4:]: v for k, v in load_file(str(file)).items() if k.startswith("vae.")}, str(ae))
    assert detect(Checkpoint(ae)) == "flux-vae"
    vae = kernel.component("AutoencoderKL").from_single_file(str(ae), config=str(folder), subfolder="vae")
    ref = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(vae.decode(vae.encode(x).latent_dist.mean).sample.numpy(),
                                   ref.decode(ref.encode(x).latent_dist.mean).sample.numpy(), atol=1e-4)


def test_sd3_without_t5(made, tmp_path, one_thread):
    folder, file = made["sd3"]
    config = tmp_path / "config"
    shutil.copytree(folder, config)
    for weights in (config / "text_encoder_3").glob("*.safetensors"):
        weights.unlink()  # a configs-only folder, as a Hub download of *.json/*.txt gives
    from safetensors.torch import load_file, save_file

    no_t5 = tmp_path / "sd3_incl_clips.safetensors"
    save_file({k: v for k, v in load_file(str(file)).items() if "t5xxl" not in k}, str(no_t5))
    with pytest.raises(ValueError, match=r"holds no text_encoder_3.*text_encoder_3=\.\.\."):
        kernel.load(str(no_t5), config=str(config))
    pipe = kernel.load(str(no_t5), config=str(config), text_encoder_3=None, tokenizer_3=None)
    assert pipe.text_encoder_3 is None
    assert fx.run(pipe, **ARGS).shape == (1, 32, 32, 3)
