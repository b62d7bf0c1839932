"""``kernel generate`` on video (AnimateDiff) and audio (AudioLDM, Dance Diffusion) folders: the written
.mp4 / .gif / .wav holds the pipeline's own output and the parameters; options a model does not take fail."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel
from kernel.cli import main
from kernel_generate.command import parse_infotext

PLUGINS = Path(__file__).resolve().parents[2]
for folder in ("animatediff", "audio"):
    sys.path.insert(0, str(PLUGINS / folder / "tests"))

pytest.importorskip("diffusers")  # the fixtures build the tiny models through Diffusers' classes
kernel_video = pytest.importorskip("kernel_video")
kernel_audio = pytest.importorskip("kernel_audio")
import ad_fixtures  # noqa: E402
import audio_fixtures  # noqa: E402

PROMPT = "a blue star"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def animatediff_folder(tmp_path_factory):
    _, ours = ad_fixtures.pipelines()
    folder = tmp_path_factory.mktemp("animatediff")
    ours.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def audioldm_folder(tmp_path_factory):
    _, ours = audio_fixtures.audioldm_components()
    folder = tmp_path_factory.mktemp("audioldm")
    kernel.component("AudioLDMPipeline")(**ours).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dance_folder(tmp_path_factory):
    pytest.importorskip("kernel_dance_diffusion")
    from kernel_dance_diffusion import DanceDiffusionPipeline, UNet1DModel

    sys.path.insert(0, str(PLUGINS / "dance-diffusion" / "tests"))
    from test_dance_diffusion import UNET  # Diffusers' fast-test UNet1D config

    torch.manual_seed(0)
    unet = UNet1DModel(**UNET)
    folder = tmp_path_factory.mktemp("dance")
    DanceDiffusionPipeline(unet=unet, scheduler=kernel.component("IPNDMScheduler")()).save_pretrained(folder)
    return folder


def _reference(folder, **call):
    pipe = kernel.load(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        return pipe(generator=torch.Generator().manual_seed(call.pop("seed")), **call)


def _gif_frames(path):
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)], im.info.get("comment")


def test_animatediff_gif_holds_the_pipelines_frames_and_parameters(tmp_path, animatediff_folder):
    out = tmp_path / "clip.gif"
    assert main(["generate", PROMPT, "--model", str(animatediff_folder), "--frames", "3", "--size", "16x16",
                 "--steps", "2", "--seed", "4", "--guidance", "6", "--fps", "5", "--out", str(out),
                 "--no-progress"]) == 0
    frames = _reference(animatediff_folder, prompt=PROMPT, num_frames=3, height=16, width=16,
                        num_inference_steps=2, guidance_scale=6.0, seed=4).frames[0]
    expected = tmp_path / "expected.gif"
    kernel_video.export_to_gif(frames, str(expected), fps=5)
    got, comment = _gif_frames(out)
    want, _ = _gif_frames(expected)
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want))
    prompt, _, params = parse_infotext(comment.decode())
    assert prompt == PROMPT and params["Seed"] == "4" and params["Frames"] == "3" and params["CFG scale"] == "6.0"
    assert params["Size"] == "16x16" and params["Steps"] == "2"


def test_animatediff_mp4_has_the_frames_and_a_comment_tag(tmp_path, animatediff_folder):
    import av

    out = tmp_path / "clip.mp4"
    assert main(["generate", PROMPT, "--model", str(animatediff_folder), "--frames", "4", "--size", "16x16",
                 "--steps", "2", "--seed", "9", "--out", str(out), "--no-progress"]) == 0
    frames = _reference(animatediff_folder, prompt=PROMPT, num_frames=4, height=16, width=16,
                        num_inference_steps=2, seed=9).frames[0]  # the pipeline's guidance
    expected = kernel_video.export_to_video(frames, str(tmp_path / "expected.mp4"), fps=8)  # H.264 is lossy: compare
    with av.open(str(out)) as container:                                           # with the same encoding
        comment = container.metadata.get("comment")
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(expected) as container:
        want = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 4 and np.array_equal(np.stack(decoded), np.stack(want))
    prompt, _, params = parse_infotext(comment)
    assert prompt == PROMPT and params["Seed"] == "9" and params["Frames"] == "4" and params["CFG scale"] == "7.5"


def test_audioldm_wav_holds_the_waveform_and_parameters(tmp_path, audioldm_folder):
    import soundfile

    out = tmp_path / "sound.wav"
    assert main(["generate", audio_fixtures.PROMPT, "--model", str(audioldm_folder), "--seconds", "0.064",
                 "--steps", "2", "--seed", "3", "--negative", "noise", "--out", str(out), "--no-progress"]) == 0
    audio = _reference(audioldm_folder, prompt=audio_fixtures.PROMPT, negative_prompt="noise",
                       audio_length_in_s=0.064, num_inference_steps=2, seed=3).audios[0]
    data, rate = soundfile.read(str(out), dtype="float32", always_2d=False)
    assert rate == 16000 and data.shape == np.asarray(audio).shape[-1:]
    assert np.array_equal(data, np.asarray(audio, dtype=np.float32).reshape(-1))
    with soundfile.SoundFile(str(out)) as f:
        prompt, negative, params = parse_infotext(f.comment)
    assert (prompt, negative, params["Seed"], params["Sampling rate"]) == (audio_fixtures.PROMPT, "noise", "3", "16000")


def test_dance_diffusion_needs_no_prompt_and_writes_stereo(tmp_path, dance_folder):
    import soundfile

    out = tmp_path / "beat.wav"
    assert main(["generate", "--model", str(dance_folder), "--seconds", "0.05", "--steps", "2", "--seed", "1",
                 "--out", str(out), "--no-progress"]) == 0
    audio = np.asarray(_reference(dance_folder, audio_length_in_s=0.05, num_inference_steps=2, seed=1).audios[0])
    data, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 16000 and data.shape == audio.T.shape and audio.shape[0] == 2
    assert np.array_equal(data, audio.T.astype(np.float32))
    with soundfile.SoundFile(str(out)) as f:
        assert parse_infotext(f.comment)[2]["Seed"] == "1"


@pytest.mark.parametrize("folder, argv, needle", [
    ("dance", ["a prompt"], "a prompt is not taken by DanceDiffusionPipeline"),
    ("dance", ["--guidance", "3"], "--guidance is not taken"),
    ("dance", ["--size", "64x64"], "--size is not taken"),
    ("dance", ["--frames", "3"], "--frames is not taken"),
    ("dance", ["--fps", "3"], "--fps is for video models"),
    ("dance", ["--out", "OUT/x.mp4"], "--out must name a .wav"),
    ("dance", ["--batch", "2"], "--batch is for picture models"),
    ("audioldm", [], "a prompt is needed"),
    ("audioldm", ["p", "--seconds", "-1"], "--seconds must be a positive"),
    ("animatediff", ["p", "--seconds", "1"], "--seconds is not taken"),
    ("animatediff", ["p", "--frames", "0"], "--frames must be >= 1"),
    ("animatediff", ["p", "--out", "OUT/x.wav"], "--out must name a .mp4 or .gif"),
])
def test_options_the_model_does_not_take_are_one_clear_line(tmp_path, capsys, request, folder, argv, needle):
    model = request.getfixturevalue(f"{folder}_folder")
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / ("x.gif" if folder == "animatediff" else "x.wav"))]
    code = main(["generate", *argv, "--model", str(model), "--steps", "1", "--no-progress", *out])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.iterdir())


def test_picture_model_refuses_media_options(tmp_path, capsys):
    code = main(["generate", PROMPT, "--frames", "4", "--steps", "1", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--frames is for video/audio models" in err
