"""ControlNetModel.from_single_file: lllyasviel's layout (``control_model.`` or unprefixed) and files with Diffusers'
names, against the Diffusers folder and Diffusers' own ``from_single_file``; real-sized layouts on the meta device."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
import sf_fixtures as fx  # noqa: E402
from sf_fixtures import one_thread  # noqa: E402,F401

import kernel  # noqa: E402
from kernel.checkpoints import Checkpoint, config_folder, detect, empty  # noqa: E402
from kernel_single_file import to_single_file  # noqa: E402
from kernel_single_file.convert import to_diffusers  # noqa: E402

diffusers = pytest.importorskip("diffusers")

#: kind: (prefix the file is written with, suffix, the family of a full-size net of that kind)
KINDS = {"sd1": ("control_model.", ".safetensors", "controlnet-sd-v1"), "sd2": ("", ".safetensors", "controlnet-sd-v2"),
         "xl": ("control_model.", ".safetensors", "controlnet-sdxl")}
ControlNetModel = kernel.component("ControlNetModel")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """kind -> (Diffusers ControlNet folder, original-layout file)."""
    root = tmp_path_factory.mktemp("controlnet-single")
    out = {}
    for kind, (prefix, suffix, _) in KINDS.items():
        folder = fx.controlnet_folder(root / kind, kind, seed=len(out))
        out[kind] = folder, fx.controlnet_single_file(folder, root / f"{kind}{suffix}", prefix)
    return out


def _inputs(kind):
    g = torch.Generator().manual_seed(3)
    args = dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 700]),
                encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                controlnet_cond=torch.rand(2, 3, 64, 64, generator=g), conditioning_scale=0.8)
    if kind == "xl":  # 80 = 32 pooled text + 6 size/crop ids x 8
        args["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=g),
                                     "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64], [32, 48, 4, 2, 64, 64]])}
    return args


def _residuals(model, kind):
    with torch.no_grad():
        out = model(**_inputs(kind), return_dict=False)
    return [*out[0], out[1]]


def _max_diff(a, b):
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.mark.parametrize("kind", list(KINDS))
def test_original_layout_matches_the_folder_and_diffusers(made, kind, one_thread):
    folder, file = made[kind]
    ours = ControlNetModel.from_single_file(str(file), config=str(folder))
    assert type(ours).__name__ == "ControlNetModel" and not ours.training
    _same_state(ours.state_dict(), ControlNetModel.from_pretrained(folder).state_dict())
    residuals = _residuals(ours, kind)
    assert _max_diff(residuals, _residuals(diffusers.ControlNetModel.from_pretrained(folder).eval(), kind)) < 1e-4
    if kind != "xl":  # Diffusers 0.42.1 does not convert an original SDXL ControlNet's label_emb (left on meta)
        theirs = diffusers.ControlNetModel.from_single_file(str(file), config=str(folder)).eval()
        assert _max_diff(residuals, _residuals(theirs, kind)) < 1e-4


@pytest.mark.parametrize("kind", list(KINDS))
def test_folder_to_single_file_and_back(made, kind, tmp_path):
    folder, file = made[kind]
    prefix = KINDS[kind][0]
    written = load_file(str(to_single_file(folder, tmp_path / "cn.safetensors")))
    # always written under ControlLDM's control_model., as lllyasviel's files are
    _same_state({k.removeprefix("control_model."): v for k, v in written.items()},
                {k.removeprefix(prefix): v for k, v in load_file(str(file)).items()})
    half = to_single_file(folder, tmp_path / "half.safetensors", dtype="fp16")
    model = ControlNetModel.from_single_file(str(half), config=str(folder))
    assert model.dtype == torch.float16  # the file's dtype, unless torch_dtype says otherwise
    model = ControlNetModel.from_single_file(half, config=folder, torch_dtype=torch.float32)
    reference = ControlNetModel.from_pretrained(folder).state_dict()
    assert model.dtype == torch.float32
    assert all(torch.equal(v, reference[k].half().float()) for k, v in model.state_dict().items())


def test_cli_file_to_folder(made, tmp_path, capsys):
    from kernel.cli import main

    folder, file = made["sd2"]
    assert main(["convert", str(file), str(tmp_path / "back"), "--config", str(folder)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "back" / "config.json").read_text())["use_linear_projection"] is True
    _same_state(load_file(str(tmp_path / "back" / "diffusion_pytorch_model.safetensors")),
                load_file(str(folder / "diffusion_pytorch_model.safetensors")))


def test_diffusers_named_single_file(made, tmp_path, one_thread):
    # SDXL ControlNets are mostly shared as one file with Diffusers' names (e.g. diffusers_xl_canny_full.safetensors)
    for kind in ("sd1", "xl"):
        folder = made[kind][0]
        file = tmp_path / f"{kind}-diffusers-names.safetensors"
        save_file(load_file(str(folder / "diffusion_pytorch_model.safetensors")), str(file))
        assert detect(Checkpoint(file)) == ("controlnet-sdxl" if kind == "xl" else "controlnet-sd-v1")
        ours = ControlNetModel.from_single_file(str(file), config=str(folder))
        _same_state(ours.state_dict(), ControlNetModel.from_pretrained(folder).state_dict())
        theirs = diffusers.ControlNetModel.from_single_file(str(file), config=str(folder)).eval()
        assert _max_diff(_residuals(ours, kind), _residuals(theirs, kind)) < 1e-4


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pth_is_read_with_weights_only(made, tmp_path):
    folder, file = made["sd1"]
    pth = fx.save(load_file(str(file)), tmp_path / "control_v11p_sd15_tiny.pth")  # nested under state_dict
    ours = ControlNetModel.from_single_file(str(pth), config=str(folder))
    _same_state(ours.state_dict(), ControlNetModel.from_pretrained(folder).state_dict())
    marker = tmp_path / "executed"
    torch.save({"state_dict": load_file(str(file)), "callback": _Payload(marker)}, tmp_path / "unsafe.pth")
    with pytest.raises(ValueError, match=r"could not read .*unsafe\.pth with torch\.load\(weights_only=True\)"):
        ControlNetModel.from_single_file(str(tmp_path / "unsafe.pth"), config=str(folder))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ real-sized layouts
def _meta_diffusers(family):
    config = json.loads((config_folder(family) / "controlnet" / "config.json").read_text())
    with torch.device("meta"):
        return diffusers.ControlNetModel.from_config(config), config


@pytest.mark.parametrize("kind", list(KINDS))
def test_real_sized_controlnets_are_detected_and_convert_completely(kind):
    prefix, _, family = KINDS[kind]
    model, config = _meta_diffusers(family)
    skeleton: dict = {}
    fx.ldm_controlnet(model.state_dict(), config, skeleton, prefix)
    shapes = {k: tuple(v.shape) for k, v in skeleton.items()}
    # what lllyasviel's files hold (control_v11p_sd15_canny: 1280-wide zero convs, a 256 -> 320 hint output)
    assert shapes[prefix + "input_hint_block.14.weight"] == (320, 256, 3, 3)
    assert shapes[prefix + "middle_block_out.0.weight"] == (1280, 1280, 1, 1)
    assert len([k for k in shapes if ".zero_convs." in "." + k and k.endswith("weight")]) == (9 if kind == "xl" else 12)
    checkpoint = Checkpoint(skeleton)
    assert detect(checkpoint) == family
    assert detect(Checkpoint(model.state_dict())) == family  # the same net with Diffusers' names
    target = empty(ControlNetModel, config_folder(family) / "controlnet")
    converted = to_diffusers(family, "controlnet", checkpoint, target)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == want
    # the bundled config builds the model: the meta-device weights go straight in
    loaded = ControlNetModel.from_single_file(skeleton)
    assert dict(loaded.config) == dict(target.config)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    if kind == "sd1":
        assert sum(p.numel() for p in loaded.parameters()) == 361_279_120  # ControlNet 1.1 for SD 1.5
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        theirs = convert_controlnet_checkpoint(skeleton, config)  # the oracle's reading of the same layout
        assert {k: tuple(v.shape) for k, v in theirs.items()} == want


def test_controlnets_are_not_unets():
    meta = lambda shapes: Checkpoint({k: torch.empty(s, device="meta") for k, s in shapes.items()})  # noqa: E731
    unet = {"input_blocks.0.0.weight": (320, 4, 3, 3),
            "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}
    assert detect(meta(unet)) == "sd-v2"  # a UNet-only file
    assert detect(meta({**unet, "input_hint_block.0.weight": (16, 3, 3, 3)})) == "controlnet-sd-v2"
    # a ControlLDM training checkpoint (the SD model and its ControlNet) is read as SD
    ldm = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
           "control_model.input_hint_block.0.weight": (16, 3, 3, 3)}
    assert detect(meta(ldm)) == "sd-v1"


# ------------------------------------------------------------------------------------------ bad input
def test_a_controlnet_file_is_not_a_pipeline(made):
    file = str(made["sd1"][1])
    with pytest.raises(ValueError, match=r"holds one model \(controlnet-sd-v1\), not a pipeline.*from_single_file"):
        kernel.load(file)
    with pytest.raises(ValueError, match=r"controlnet-sd-v1 checkpoint, which has no UNet2DConditionModel"):
        kernel.component("UNet2DConditionModel").from_single_file(file)


def test_wrong_files_for_a_controlnet(made, tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(tmp_path / "unet.safetensors"))
    with pytest.raises(ValueError, match=r"sd-v1 checkpoint, which has no ControlNetModel"):
        ControlNetModel.from_single_file(str(tmp_path / "unet.safetensors"))
    with pytest.raises(ValueError, match=r"controlnet weights do not fit the controlnet config .*not the standard "
                                         r"controlnet-sdxl architecture: pass config="):
        ControlNetModel.from_single_file(str(made["xl"][1]))  # tiny, against the bundled full-size config
    (tmp_path / "union").mkdir()
    (tmp_path / "union" / "config.json").write_text(json.dumps({"_class_name": "ControlNetUnionModel"}))
    with pytest.raises(ValueError, match=r"holds a ControlNetUnionModel; single files are written for .*ControlNetModel"):
        to_single_file(tmp_path / "union", tmp_path / "union.safetensors")
