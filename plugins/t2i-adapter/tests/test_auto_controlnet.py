"""``AutoPipelineFor*.from_pretrained(folder, controlnet=...)`` / ``.from_pipe(pipe, controlnet=...)`` pick the
ControlNet variant of the family, as Diffusers' auto pipelines do (Diffusers is the oracle for the class each
call picks), and ``controlnet=None`` goes back to the plain pipeline."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

import kernel

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "controlnet" / "tests"))
from t2i_fixtures import fx, single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("kernel_controlnet")
import cn_fixtures as cf  # noqa: E402

from kernel_sd.auto import controlnet_infix, task_class_name  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

AUTOS = ["AutoPipelineForText2Image", "AutoPipelineForImage2Image", "AutoPipelineForInpainting"]


@functools.lru_cache(maxsize=None)
def _folder(tmp: Path, xl: bool) -> Path:
    """A plain SD / SDXL pipeline folder (ours, Diffusers' format)."""
    _, parts = fx.xl_components() if xl else fx.sd_components()
    folder = tmp / ("sdxl" if xl else "sd")
    kernel.component("StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline")(**parts).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto")
    return lambda xl: _folder(tmp, xl)


@functools.lru_cache(maxsize=None)
def _nets(xl: bool):
    return cf.controlnet(seed=5, xl=xl)


@pytest.mark.parametrize("auto", AUTOS)
@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("pag", [None, True], ids=["plain", "pag"])
def test_from_pretrained_with_controlnet_picks_diffusers_class(folders, auto, xl, pag):
    theirs_net, ours_net = _nets(xl)
    extra = {} if pag is None else {"enable_pag": pag}
    try:
        expected = type(getattr(diffusers, auto).from_pretrained(folders(xl), controlnet=theirs_net, **extra)).__name__
    except ValueError:  # Diffusers has no such variant either
        expected = None
    if expected is None or not kernel.registry.get_registry().has(expected):
        with pytest.raises(ValueError, match="no installed plugin provides"):
            getattr(kernel.component(auto), "from_pretrained")(folders(xl), controlnet=ours_net, **extra)
        return
    pipe = kernel.component(auto).from_pretrained(folders(xl), controlnet=ours_net, **extra)
    assert type(pipe).__name__ == expected and "ControlNet" in expected
    assert pipe.controlnet is ours_net


@pytest.mark.parametrize("auto", AUTOS)
def test_from_pipe_adds_and_drops_the_controlnet_like_diffusers(folders, auto):
    theirs_net, ours_net = _nets(False)
    theirs_plain = diffusers.StableDiffusionPipeline.from_pretrained(folders(False))
    ours_plain = kernel.load(str(folders(False)))
    theirs_cn = getattr(diffusers, auto).from_pipe(theirs_plain, controlnet=theirs_net)
    ours_cn = kernel.component(auto).from_pipe(ours_plain, controlnet=ours_net)
    assert type(ours_cn).__name__ == type(theirs_cn).__name__
    assert ours_cn.controlnet is ours_net and ours_cn.unet is ours_plain.unet  # shared, not copied
    for target in AUTOS:  # a ControlNet pipeline stays one across tasks, and controlnet=None leaves it
        kept = kernel.component(target).from_pipe(ours_cn)
        assert type(kept).__name__ == type(getattr(diffusers, target).from_pipe(theirs_cn)).__name__
        assert kept.controlnet is ours_net
        dropped = kernel.component(target).from_pipe(ours_cn, controlnet=None)
        assert type(dropped).__name__ == type(getattr(diffusers, target).from_pipe(theirs_cn, controlnet=None)).__name__
        assert "ControlNet" not in type(dropped).__name__ and dropped.unet is ours_plain.unet


def test_controlnet_pag_pipeline_from_pipe_keeps_pag_and_swaps_the_net():
    _, parts = fx.sd_components()
    _, net = _nets(False)
    pag = kernel.component("StableDiffusionControlNetPAGPipeline")(**parts, controlnet=net, pag_applied_layers=["mid"])
    _, other = cf.controlnet(seed=9)
    swapped = kernel.component("AutoPipelineForText2Image").from_pipe(pag, controlnet=other)
    assert type(swapped).__name__ == "StableDiffusionControlNetPAGPipeline" and swapped.controlnet is other
    assert swapped.pag_applied_layers == ["mid"]
    plain = kernel.component("AutoPipelineForText2Image").from_pipe(pag, controlnet=None, enable_pag=False)
    assert type(plain).__name__ == "StableDiffusionPipeline"


def test_auto_controlnet_pipeline_gives_the_same_image_as_the_class(folders):
    _, net = _nets(False)
    auto = kernel.component("AutoPipelineForText2Image").from_pretrained(folders(False), controlnet=net)
    direct = kernel.component("StableDiffusionControlNetPipeline").from_pretrained(folders(False), controlnet=net)
    call = dict(prompt="a cat", image=cf.control_image(32), num_inference_steps=2, output_type="np")
    for p in (auto, direct):
        p.set_progress_bar_config(disable=True)
    fx.assert_images_close(auto(generator=fx.gen(0), **call).images, direct(generator=fx.gen(0), **call).images,
                           atol=0)


def test_controlnet_folder_loads_back_plain_with_controlnet_none(tmp_path):
    _, parts = fx.sd_components()
    _, net = _nets(False)
    kernel.component("StableDiffusionControlNetImg2ImgPipeline")(**parts, controlnet=net).save_pretrained(tmp_path)
    kept = kernel.component("AutoPipelineForInpainting").from_pretrained(tmp_path)
    assert type(kept).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert type(kept.controlnet).__name__ == "ControlNetModel"
    plain = kernel.component("AutoPipelineForText2Image").from_pretrained(tmp_path, controlnet=None)
    assert type(plain).__name__ == "StableDiffusionPipeline"


NAMES = [  # (source, task, pag, controlnet) -> expected
    (("StableDiffusionPipeline", "text2image", None, True), "StableDiffusionControlNetPipeline"),
    (("StableDiffusionXLImg2ImgPipeline", "image2image", None, True), "StableDiffusionXLControlNetImg2ImgPipeline"),
    (("StableDiffusionXLPipeline", "image2image", True, True), "StableDiffusionXLControlNetPAGImg2ImgPipeline"),
    (("StableDiffusionControlNetPAGPipeline", "inpainting", None, None), "StableDiffusionControlNetPAGInpaintPipeline"),
    (("StableDiffusionControlNetPAGPipeline", "text2image", False, False), "StableDiffusionPipeline"),
    (("StableDiffusionXLControlNetInpaintPipeline", "text2image", None, False), "StableDiffusionXLPipeline"),
    (("StableDiffusion3ControlNetInpaintingPipeline", "text2image", None, None), "StableDiffusion3ControlNetPipeline"),
    (("StableDiffusionXLPipeline", "text2image", None, "ControlNetUnion"),
     "StableDiffusionXLControlNetUnionPipeline"),
    (("StableDiffusionXLControlNetUnionImg2ImgPipeline", "text2image", None, "ControlNet"),
     "StableDiffusionXLControlNetPipeline"),
    (("FluxPipeline", "inpainting", None, True), "FluxControlNetInpaintPipeline"),
]


@pytest.mark.parametrize("args,expected", NAMES, ids=[e for _, e in NAMES])
def test_task_class_name_rule(args, expected):
    assert task_class_name(*args) == expected


def test_controlnet_infix_of_nets():
    _, net = _nets(False)
    assert controlnet_infix(None) == "" and controlnet_infix(net) == "ControlNet"
    assert controlnet_infix([net, net]) == "ControlNet"
    assert controlnet_infix(type("ControlNetUnionModel", (), {})()) == "ControlNetUnion"


def test_sd3_controlnet_inpainting_spelling_is_found():
    """SD3 names its ControlNet inpainting class ...InpaintingPipeline; the auto pipeline finds it."""
    registry = kernel.registry.get_registry()
    if not registry.has("StableDiffusion3ControlNetInpaintingPipeline"):
        pytest.skip("no plugin provides StableDiffusion3ControlNetInpaintingPipeline")
    source = registry.resolve("StableDiffusion3ControlNetPipeline")
    picked = kernel.component("AutoPipelineForInpainting")._select(source)
    assert picked.__name__ == "StableDiffusion3ControlNetInpaintingPipeline"
