"""SD 1.x/2.x and SDXL single files: the same pictures as Diffusers' from_single_file and as the original folder."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sf_fixtures as fx  # noqa: E402
from sf_fixtures import one_thread  # noqa: E402,F401

import kernel  # noqa: E402

diffusers = pytest.importorskip("diffusers")

KINDS = {  # kind: (our class, Diffusers class, family, call arguments)
    "sd1": ("StableDiffusionPipeline", "sd-v1", {}),
    "sd2": ("StableDiffusionPipeline", "sd-v2", {}),
    "inpaint": ("StableDiffusionInpaintPipeline", "sd-v1-inpaint", {"image": "image", "mask_image": "mask"}),
    "xl": ("StableDiffusionXLPipeline", "sdxl-base", {}),
    "refiner": ("StableDiffusionXLImg2ImgPipeline", "sdxl-refiner", {"image": "image", "strength": 0.6}),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """kind -> (Diffusers folder, single file)."""
    root = tmp_path_factory.mktemp("sd-single")
    out = {}
    for kind in KINDS:
        folder = fx.sd_folder(root / kind, "sd2" if kind == "sd2" else kind)
        out[kind] = folder, fx.sd_single_file(folder, root / f"{kind}.safetensors", kind)
    return out


def _args(kind):
    from kernel_contracts.testing import box_mask, random_image

    extra = dict(KINDS[kind][2])
    if "image" in extra:
        extra["image"] = random_image(32, 32, seed=1)
    if "mask_image" in extra:
        extra["mask_image"] = box_mask(32, 32)
    return extra


@pytest.mark.parametrize("kind", list(KINDS))
def test_pipeline_matches_diffusers_single_file_and_folder(made, kind, one_thread):
    folder, file = made[kind]
    name, family, _ = KINDS[kind]
    ours = kernel.load(str(file), config=str(folder))
    assert type(ours).__name__ == name
    assert all(not m.training for m in ours.components.values() if isinstance(m, torch.nn.Module))
    theirs_file = getattr(diffusers, name).from_single_file(str(file), config=str(folder))
    theirs_folder = getattr(diffusers, name).from_pretrained(folder)
    picture = fx.run(ours, **_args(kind))
    fx.assert_close(picture, fx.run(theirs_file, **_args(kind)))
    fx.assert_close(picture, fx.run(theirs_folder, **_args(kind)))
    from kernel.checkpoints import Checkpoint, detect

    assert detect(Checkpoint(file)) == family


def test_task_classes_and_overrides(made, one_thread):
    folder, file = made["sd1"]
    Img2Img = kernel.component("StableDiffusionImg2ImgPipeline")
    ddim = kernel.component("DDIMScheduler").from_config(fx.SCHED)
    ours = Img2Img.from_single_file(str(file), config=str(folder), scheduler=ddim, torch_dtype=torch.float32)
    assert ours.scheduler is ddim
    theirs = diffusers.StableDiffusionImg2ImgPipeline.from_single_file(
        str(file), config=str(folder), scheduler=diffusers.DDIMScheduler(**fx.SCHED))
    args = dict(image=_args("refiner")["image"], strength=0.7)
    fx.assert_close(fx.run(ours, **args), fx.run(theirs, **args))
    half = kernel.component("StableDiffusionPipeline").from_single_file(
        str(file), config=str(folder), torch_dtype={"unet": torch.float16, "default": torch.float32})
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    assert half.text_encoder.dtype == torch.float32


def test_ckpt_read_with_weights_only(made, tmp_path, one_thread):
    folder, file = made["sd1"]
    from safetensors.torch import load_file

    ckpt = fx.save(load_file(str(file)), tmp_path / "model.ckpt")  # nested under state_dict, plus step counters
    a = kernel.load(str(ckpt), config=str(folder))
    b = kernel.load(str(file), config=str(folder))
    fx.assert_close(fx.run(a), fx.run(b), atol=0)

    from fractions import Fraction  # an object only plain pickle would rebuild

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Fraction(1, 3)}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        kernel.load(str(tmp_path / "evil.ckpt"), config=str(folder))


def test_standalone_vae_and_unet_files_load_into_a_pipeline(made, tmp_path, one_thread):
    folder, file = made["sd1"]
    vae_file = fx.sd_single_file(folder, tmp_path / "vae.safetensors", components=("vae",))
    from safetensors.torch import load_file, save_file

    # A1111-style VAE files have no prefix
    save_file({k.removeprefix("first_stage_model."): v for k, v in load_file(str(vae_file)).items()
               if k.startswith("first_stage_model.")}, str(vae_file))
    unet_file = fx.sd_single_file(folder, tmp_path / "unet.safetensors", components=("unet",))
    AutoencoderKL, UNet = kernel.component("AutoencoderKL"), kernel.component("UNet2DConditionModel")
    vae = AutoencoderKL.from_single_file(str(vae_file), config=str(folder), subfolder="vae")
    unet = UNet.from_single_file(str(unet_file), config=str(folder / "unet"))
    assert not vae.training and not unet.training
    their_vae = diffusers.AutoencoderKL.from_single_file(str(vae_file), config=str(folder), subfolder="vae")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fx.assert_close(vae(x).sample, their_vae(x).sample, atol=1e-4)
    pipe = kernel.component("StableDiffusionPipeline").from_pretrained(folder, vae=vae, unet=unet)
    fx.assert_close(fx.run(pipe), fx.run(diffusers.StableDiffusionPipeline.from_pretrained(folder)))
    # the UNet of a whole checkpoint, too
    whole = UNet.from_single_file(str(file), config=str(folder), subfolder="unet")
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), unet.state_dict().values()))


def test_ema_weights(made, tmp_path):
    folder, file = made["sd1"]
    from safetensors.torch import load_file

    state = load_file(str(file))
    ema = {"model_ema." + k.removeprefix("model.").replace(".", ""): v + 1 for k, v in state.items()
           if k.startswith("model.diffusion_model.")}
    both = fx.save({**state, **ema}, tmp_path / "ema.safetensors")
    UNet = kernel.component("UNet2DConditionModel")
    plain = UNet.from_single_file(str(both), config=str(folder), subfolder="unet")
    averaged = UNet.from_single_file(str(both), config=str(folder), subfolder="unet", extract_ema=True)
    ref = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, ref[key])
        assert torch.equal(averaged.state_dict()[key], ref[key] + 1)
    with pytest.raises(ValueError, match="no EMA weights"):
        UNet.from_single_file(str(file), config=str(folder), subfolder="unet", extract_ema=True)
    with pytest.raises(TypeError, match="unexpected arguments.*extract_emma"):
        UNet.from_single_file(str(file), config=str(folder), subfolder="unet", extract_emma=True)
