"""Both directions: Diffusers folder -> single file -> Diffusers folder, in Python and with ``kernel convert``."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import sf_fixtures as fx  # noqa: E402
from sf_fixtures import one_thread  # noqa: E402,F401

import kernel  # noqa: E402
from kernel.cli import main  # noqa: E402
from kernel_single_file import to_diffusers_folder, to_single_file  # noqa: E402

diffusers = pytest.importorskip("diffusers")


def _same_tensors(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("kind, family", [("sd1", "sd-v1"), ("sd2", "sd-v2"), ("xl", "sdxl-base"),
                                          ("refiner", "sdxl-refiner")])
def test_folder_to_single_file_writes_the_original_layout(tmp_path, kind, family):
    folder = fx.sd_folder(tmp_path / kind, kind)
    ours = to_single_file(folder, tmp_path / "ours.safetensors", family=family if kind == "sd2" else None)
    reference = load_file(str(fx.sd_single_file(folder, tmp_path / "ref.safetensors", kind)))
    for key in ("alphas_cumprod", "betas", "model_ema.decay", "model_ema.num_updates"):
        reference.pop(key)
    written = load_file(str(ours))
    if kind == "sd2":  # OpenCLIP's text_projection is not in SD 2.x's CLIPTextModel
        reference.pop("cond_stage_model.model.text_projection", None)
    _same_tensors(written, reference)


@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_mmdit_folders_round_trip(tmp_path, kind, one_thread):
    folder = fx.mmdit_folder(tmp_path / kind, kind)
    file = to_single_file(folder, tmp_path / "one.safetensors")
    reference = load_file(str(fx.mmdit_single_file(folder, tmp_path / "ref.safetensors", kind)))
    written = load_file(str(file))
    # ours writes the CLIP-L projection SD3 files leave out (the identity) and T5's tied embedding once
    written.pop("text_encoders.clip_l.transformer.text_projection.weight", None)
    reference.pop("text_encoders.t5xxl.transformer.encoder.embed_tokens.weight")
    _same_tensors(written, reference)
    back = to_diffusers_folder(file, tmp_path / "back", config=folder)
    args = dict(prompt="a cat", num_inference_steps=2, height=32, width=32, max_sequence_length=16)
    cls = getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])
    fx.assert_close(fx.run(cls.from_pretrained(back), **args), fx.run(cls.from_pretrained(folder), **args))


def test_single_file_to_folder_loads_in_diffusers(tmp_path, one_thread):
    folder = fx.sd_folder(tmp_path / "xl", "xl", width_2=32)  # same-width encoders: told apart by the config
    file = fx.sd_single_file(folder, tmp_path / "xl.safetensors", "xl")
    out = to_diffusers_folder(file, tmp_path / "converted", config=folder, torch_dtype=torch.float32)
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(out)
    fx.assert_close(fx.run(theirs), fx.run(diffusers.StableDiffusionXLPipeline.from_pretrained(folder)))
    assert (out / "tokenizer_2" / "tokenizer_config.json").is_file()


def test_fp16_file_and_vae_folder(tmp_path):
    folder = fx.sd_folder(tmp_path / "sd1")
    half = to_single_file(folder, tmp_path / "half.safetensors", dtype="fp16", components=["unet"])
    state = load_file(str(half))
    assert all(k.startswith("model.diffusion_model.") and v.dtype == torch.float16 for k, v in state.items())
    unet = kernel.component("UNet2DConditionModel").from_single_file(str(half), config=str(folder), subfolder="unet")
    assert unet.dtype == torch.float16  # the file's dtype is kept when torch_dtype is not given
    vae_file = to_single_file(folder / "vae", tmp_path / "vae.safetensors")
    assert all(not k.startswith("first_stage_model.") for k in load_file(str(vae_file)))  # A1111-style, unprefixed
    vae_folder = to_diffusers_folder(vae_file, tmp_path / "vae", config=folder / "vae")
    _same_tensors(load_file(str(vae_folder / "diffusion_pytorch_model.safetensors")),
                  load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")))


def test_cli_both_ways(tmp_path, capsys):
    folder = fx.sd_folder(tmp_path / "sd1")
    assert main(["convert", str(folder), str(tmp_path / "model.safetensors"), "--dtype", "fp16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "model.safetensors"), str(tmp_path / "back"), "--config", str(folder),
                 "--dtype", "fp32"]) == 0
    pipe = kernel.load(str(tmp_path / "back"))
    assert pipe.unet.dtype == torch.float32 and type(pipe).__name__ == "StableDiffusionPipeline"
    assert main(["convert", str(tmp_path / "model.safetensors"), str(tmp_path / "x"), "--family", "sd-v2"]) == 2
    assert "--family and --components apply to folder" in capsys.readouterr().err
    assert main(["convert", str(folder), str(tmp_path / "y.safetensors"), "--family", "sdxl-turbo"]) == 2
    assert "family='sdxl-turbo' is not one of" in capsys.readouterr().err
