"""``kernel generate`` on the embedded shapes-64 model: PNG parameters, --from, batches, errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernel.cli import main
from kernel_generate.command import format_infotext, parse_infotext, parse_size, resolve_model

PROMPT = "a blue star at the center on a black background"


def _params(path):
    with Image.open(path) as im:
        return parse_infotext(im.info["parameters"])


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_embedded_model_is_the_default():
    name, folder = resolve_model(None)
    assert name == "shapes-64"
    assert (Path(folder) / "model_index.json").is_file()


def test_generate_writes_a1111_parameters_and_from_reproduces_exactly(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", PROMPT, "--steps", "3", "--seed", "7", "--out", str(a)]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err  # the progress bar shows the steps
    prompt, negative, params = _params(a)
    assert (prompt, negative) == (PROMPT, "")
    assert params["Steps"] == "3" and params["Seed"] == "7" and params["Size"] == "64x64"
    assert params["Model"] == "shapes-64" and params["Sampler"] and float(params["CFG scale"]) > 1
    with Image.open(a) as im:
        assert im.size == (64, 64)
    assert main(["generate", "--from", str(a), "--out", str(b), "--no-progress"]) == 0
    assert np.array_equal(_pixels(a), _pixels(b))
    assert _params(b) == _params(a)
    # an explicit option overrides the stored one
    c = tmp_path / "c.png"
    assert main(["generate", "--from", str(a), "--seed", "8", "--out", str(c), "--no-progress"]) == 0
    assert _params(c)[2]["Seed"] == "8" and not np.array_equal(_pixels(a), _pixels(c))


@pytest.mark.parametrize("sampler", ["DPM++ 2M Karras", "DDIMScheduler"])
def test_samplers_by_a1111_and_class_name_with_negative_prompt(tmp_path, sampler):
    out = tmp_path / "s.png"
    assert main(["generate", PROMPT, "--sampler", sampler, "--steps", "3", "--seed", "1", "--negative",
                 "a red, square", "--guidance", "3", "--out", str(out), "--no-progress"]) == 0
    prompt, negative, params = _params(out)
    assert (negative, params["Sampler"], params["CFG scale"]) == ("a red, square", sampler, "3.0")
    again = tmp_path / "again.png"
    assert main(["generate", "--from", str(out), "--out", str(again), "--no-progress"]) == 0
    assert np.array_equal(_pixels(out), _pixels(again))


def test_batch_writes_files_and_a_grid_with_consecutive_seeds(tmp_path):
    out = tmp_path / "batch.png"
    assert main(["generate", PROMPT, "--batch", "3", "--steps", "2", "--seed", "5", "--out", str(out),
                 "--no-progress"]) == 0
    files = [tmp_path / f"batch-{i}.png" for i in range(3)]
    assert [_params(f)[2]["Seed"] for f in files] == ["5", "6", "7"]
    with Image.open(tmp_path / "batch-grid.png") as im:
        assert im.size == (128, 128)
    grid = _pixels(tmp_path / "batch-grid.png")
    assert np.array_equal(grid[64:, :64], _pixels(files[2]))
    redo = tmp_path / "redo.png"
    assert main(["generate", "--from", str(files[1]), "--out", str(redo), "--no-progress"]) == 0
    assert np.array_equal(_pixels(redo), _pixels(files[1]))


@pytest.mark.parametrize("argv, needle", [
    (["--sampler", "Eulerr"], "unknown sampler"),
    (["--size", "66x64"], "multiples of 4"),
    (["--size", "big"], "WIDTHxHEIGHT"),
    (["--steps", "0"], "--steps"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--dtype", "float16", "--device", "cuda:7"], "--device"),
])
def test_bad_options_are_one_clear_line(tmp_path, capsys, argv, needle):
    if "cuda:7" in argv:
        pytest.importorskip("torch")
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    code = main(["generate", PROMPT, "--steps", "2", "--out", str(tmp_path / "x.png"), "--no-progress", *argv]
                if "--steps" not in argv else ["generate", PROMPT, "--out", str(tmp_path / "x.png"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("kernel generate: error:")
    assert not (tmp_path / "x.png").exists()


def test_unreadable_model_folder_exits_non_zero_without_traceback(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    kernel_bin = Path(sys.executable).with_name("kernel")
    for folder, needle in ((tmp_path, "model_index.json"), (broken, "cannot load")):
        out = subprocess.run([str(kernel_bin), "generate", PROMPT, "--model", str(folder), "--out",
                              str(tmp_path / "x.png")], capture_output=True, text=True)
        assert out.returncode == 2
        assert "Traceback" not in out.stderr and needle in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_infotext_round_trip_and_parse_of_webui_text():
    text = format_infotext("a red, circle: big\nsecond line", "blurry\nugly",
                           {"Steps": 20, "Sampler": "DPM++ 2M", "CFG scale": 7.0, "Seed": 1, "Model": 'x: "y"'})
    prompt, negative, params = parse_infotext(text)
    assert prompt == "a red, circle: big\nsecond line" and negative == "blurry\nugly"
    assert params == {"Steps": "20", "Sampler": "DPM++ 2M", "CFG scale": "7.0", "Seed": "1", "Model": 'x: "y"'}
    webui = ("masterpiece, cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Schedule type: Karras, "
             "CFG scale: 7, Seed: 42, Size: 512x768, Model hash: abc123, Model: sd15")
    prompt, negative, params = parse_infotext(webui)
    assert (prompt, negative, params["Sampler"], params["Size"]) == ("masterpiece, cat", "dog", "Euler a", "512x768")
    assert parse_infotext("just a prompt") == ("just a prompt", "", {})
    assert parse_size("64x48") == (64, 48)


# ---------------------------------------------------------------------------- --control / --controlnet
@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def controlnet_folder(tmp_path_factory):
    """A tiny ControlNet started from the embedded model's UNet (its control encoder downsamples 4x, the VAE's
    factor), its zero-initialised output layers randomised so that it steers the picture."""
    pytest.importorskip("kernel_controlnet")
    import torch

    import kernel

    unet = kernel.component("UNet2DConditionModel").from_pretrained(Path(resolve_model(None)[1]) / "unet")
    torch.manual_seed(0)
    net = kernel.component("ControlNetModel").from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    folder = tmp_path_factory.mktemp("controlnet")
    net.save_pretrained(folder)
    picture = tmp_path_factory.mktemp("pictures") / "photo.png"
    Image.fromarray((np.indices((96, 96)).sum(0) % 32 < 16).astype(np.uint8) * 255).convert("RGB").save(picture)
    return folder, picture


@pytest.mark.usefixtures("one_thread")
def test_control_steers_the_picture_canny_equals_its_prepared_image_and_from_reproduces_it(tmp_path,
                                                                                          controlnet_folder):
    from kernel_controlnet import canny

    folder, picture = controlnet_folder
    edges = tmp_path / "edges.png"
    with Image.open(picture) as im:  # what canny:PICTURE does: resize to the output size, then edges
        canny(im.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)).save(edges)
    common = [PROMPT, "--steps", "1", "--seed", "3", "--no-progress"]
    control = ["--controlnet", str(folder), "--control-scale", "1.5"]
    out = {name: tmp_path / f"{name}.png" for name in ("plain", "canny", "image", "again")}
    assert main(["generate", *common, "--out", str(out["plain"])]) == 0
    assert main(["generate", *common, "--control", f"canny:{picture}", *control, "--out", str(out["canny"])]) == 0
    assert main(["generate", *common, "--control", f"image:{edges}", *control, "--out", str(out["image"])]) == 0
    assert np.abs(_pixels(out["canny"]).astype(int) - _pixels(out["plain"]).astype(int)).max() > 10
    assert np.array_equal(_pixels(out["canny"]), _pixels(out["image"]))
    params = _params(out["canny"])[2]
    assert params["Control"] == f"canny:{picture}" and params["ControlNet"] == str(folder)
    assert params["Control scale"] == "1.5"
    assert main(["generate", "--from", str(out["canny"]), "--out", str(out["again"]), "--no-progress"]) == 0
    assert np.array_equal(_pixels(out["canny"]), _pixels(out["again"]))


@pytest.mark.parametrize("argv, needle", [
    (["--control", "canny:x.png"], "--controlnet is missing"),
    (["--controlnet", "net"], "--control is missing"),
    (["--control", "depth:x.png", "--controlnet", "net"], "KIND:PATH"),
    (["--control-scale", "0.5"], "--control-scale needs"),
    (["--control", "image:missing.png", "--controlnet", "CONTROLNET"], "no such file"),
    (["--control", "canny:PICTURE", "--controlnet", "NOWHERE"], "cannot load the ControlNet"),
    (["--control", "canny:PICTURE", "--controlnet", "UNION"], "is a ControlNetUnionModel"),
    (["--control", "canny:PICTURE", "--controlnet", "CONTROLNET", "--control-scale", "nan"], "--control-scale"),
])
def test_bad_control_options_are_one_clear_line(tmp_path, capsys, controlnet_folder, argv, needle):
    folder, picture = controlnet_folder
    union = tmp_path / "union"
    union.mkdir()
    (union / "config.json").write_text('{"_class_name": "ControlNetUnionModel"}')
    argv = [{"CONTROLNET": str(folder), "PICTURE": str(picture), "canny:PICTURE": f"canny:{picture}",
             "NOWHERE": str(tmp_path / "nowhere"), "UNION": str(union)}.get(a, a) for a in argv]
    code = main(["generate", PROMPT, "--steps", "1", "--out", str(tmp_path / "x.png"), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "x.png").exists()
