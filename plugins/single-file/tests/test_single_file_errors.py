"""Bad input: each a clear error, raised before any model is built."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
import sf_fixtures as fx  # noqa: E402

import kernel  # noqa: E402
from kernel.loading import CheckpointMismatchError  # noqa: E402
from kernel.registry import Registry, get_registry, reset_registry  # noqa: E402

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    folder = fx.sd_folder(root / "sd1")
    return folder, fx.sd_single_file(folder, root / "sd1.safetensors")


def _write(path, tensors):
    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("content, match", [
    (b"not a model at all, just some text\n", r"could not read .*notes\.safetensors with torch\.load\(weights_only=True\)"),
    (b"", r"could not read .*notes\.safetensors"),
])
def test_not_a_checkpoint(tmp_path, content, match):
    (tmp_path / "notes.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        kernel.load(str(tmp_path / "notes.safetensors"))


def test_truncated_file(sd1, tmp_path):
    data = sd1[1].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors: it is corrupt or truncated"):
        kernel.load(str(tmp_path / "cut.safetensors"))


def test_unknown_layout_lists_the_families(tmp_path):
    path = _write(tmp_path / "odd.safetensors", {"backbone.layer1.weight": (4, 4), "head.bias": (4,)})
    with pytest.raises(ValueError, match=r"unknown checkpoint layout \(2 tensors.*families: .*controlnet-sd-v1, "
                                         r"controlnet-sd-v2, controlnet-sdxl, flux-dev, flux-schnell, flux-vae, sd-v1, "
                                         r"sd-v1-inpaint, sd-v2.*sdxl-refiner"):
        kernel.load(path)


@pytest.mark.parametrize("tensors, match", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8),
      "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}, r"is a LoRA.*load_lora_weights"),
    ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 8)}, r"is a LoRA"),
    ({"emb_params": (2, 768)}, r"textual-inversion embedding.*load_textual_inversion"),
    ({"clip_l": (2, 768), "clip_g": (2, 1280)}, r"textual-inversion embedding"),
])
def test_adapters_are_not_checkpoints(tmp_path, tensors, match):
    with pytest.raises(ValueError, match=match):
        kernel.load(_write(tmp_path / "adapter.safetensors", tensors))


def test_a1111_embedding_pt(tmp_path):
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": torch.zeros(2, 768)},
                "name": "style", "step": 100}, tmp_path / "style.pt")
    with pytest.raises(ValueError, match="textual-inversion embedding"):
        kernel.load(str(tmp_path / "style.pt"))


def test_missing_tokenizer_without_config(sd1):
    # Tokenizers are not bundled: without config= the error names them and the ways to provide them.
    with pytest.raises(ValueError, match=r"holds no tokenizer, and the bundled config has none: pass tokenizer=\.\.\."
                                         r".*config=<a local Diffusers folder"):
        kernel.load(str(sd1[1]))


def test_a_tiny_file_against_the_bundled_config(sd1):
    tokenizer = kernel.load(str(sd1[1]), config=str(sd1[0])).tokenizer
    with pytest.raises(ValueError, match=r"weights do not fit the .* config .*not the standard sd-v1 architecture: "
                                         r"pass config="):
        kernel.load(str(sd1[1]), tokenizer=tokenizer)


def test_wrong_family_and_class(sd1):
    folder, file = sd1
    with pytest.raises(CheckpointMismatchError, match="StableDiffusionPipeline"):
        kernel.load("sdxl", str(file), config=str(folder))
    with pytest.raises(CheckpointMismatchError):
        kernel.component("StableDiffusionXLPipeline").from_single_file(str(file), config=str(folder))
    with pytest.raises(ValueError, match=r"sd-v1 checkpoint, which has no SD3Transformer2DModel"):
        kernel.component("SD3Transformer2DModel").from_single_file(str(file))


def test_single_model_file_is_not_a_pipeline(sd1, tmp_path):
    vae = {k.removeprefix("first_stage_model."): v for k, v in load_file(str(sd1[1])).items()
           if k.startswith("first_stage_model.")}
    save_file(vae, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ValueError, match=r"holds one model \(sd-vae\), not a pipeline"):
        kernel.load(str(tmp_path / "vae.safetensors"))
    with pytest.raises(ValueError, match=r"sd-vae checkpoint, which has no unet"):
        kernel.component("UNet2DConditionModel").from_single_file(str(tmp_path / "vae.safetensors"), subfolder="unet")


def test_family_plugin_not_installed(tmp_path):
    folder = fx.mmdit_folder(tmp_path / "sd3", "sd3", t5=False)
    file = fx.mmdit_single_file(folder, tmp_path / "sd3.safetensors", "sd3")
    others = {name for name in get_registry().plugins if name != "kernel-sd3"}
    reset_registry(Registry(allowed={n.lower() for n in others}))
    try:
        with pytest.raises(LookupError, match="StableDiffusion3Pipeline.*pip install kernel-sd3"):
            kernel.load(str(file), config=str(folder))
    finally:
        reset_registry(None)
