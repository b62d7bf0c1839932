"""UNet1DModel and DanceDiffusionPipeline against Diffusers: same weights, same inputs, same seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffusers
import kernel
from kernel.pipeline import DiffusionPipeline
from kernel_audio import AudioPipelineOutput
from kernel_dance_diffusion import DanceDiffusionPipeline, UNet1DModel

# Diffusers' fast-test UNet; time_embedding_dim=16 matches extra_in_channels, without which Diffusers >= 0.36
# builds a 64-wide embedding that its own first block cannot take.
UNET = dict(block_out_channels=(32, 32, 64), extra_in_channels=16, sample_size=512, sample_rate=16000, in_channels=2,
            out_channels=2, flip_sin_to_cos=True, use_timestep_embedding=False, time_embedding_type="fourier",
            mid_block_type="UNetMidBlock1D", down_block_types=["DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"],
            up_block_types=["AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"], time_embedding_dim=16)
ATOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unet_pair(seed=0, **over):
    torch.manual_seed(seed)
    d = diffusers.UNet1DModel(**{**UNET, **over}).eval()
    k = UNet1DModel.from_config(dict(d.config))
    result = k.load_state_dict(d.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return d, k.eval()


def pipes(sched="IPNDMScheduler", **sched_config):
    du, ku = unet_pair()
    ds = getattr(diffusers, sched)(**sched_config)
    ref = diffusers.DanceDiffusionPipeline(unet=du, scheduler=ds)
    ours = DanceDiffusionPipeline(unet=ku, scheduler=kernel.component(sched).from_config(dict(ds.config)))
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


@pytest.fixture(scope="module")
def pair():
    return pipes()


def gen(seed=0, n=None):
    return torch.Generator().manual_seed(seed) if n is None else [torch.Generator().manual_seed(seed + i) for i in range(n)]


def both(ref, ours, seed=0, n=None, **kw):
    kw.setdefault("num_inference_steps", 4)
    return ref(generator=gen(seed, n), **kw).audios, ours(generator=gen(seed, n), **kw).audios


def check(a, b):
    assert isinstance(b, np.ndarray) and a.shape == b.shape, (a.shape, b.shape)
    assert (np.abs(b) < 0.999).mean() > 0.2, "almost every sample is clamped; the comparison would show nothing"
    diff = float(np.abs(a - b).max())
    assert diff < ATOL, diff


# ---------------------------------------------------------------- the model
@pytest.mark.parametrize("t", [torch.tensor(0.5), torch.tensor([0.25, 0.75]), 3])
def test_unet_matches_diffusers(t):
    d, k = unet_pair()
    x = torch.randn(2, 2, 256, generator=gen(1))
    with torch.no_grad():
        a, b = d(x, t).sample, k(x, t).sample
    assert b.shape == (2, 2, 256)
    assert (a - b).abs().max() < 1e-4


def test_positional_time_embedding_matches_diffusers():
    d, k = unet_pair(time_embedding_type="positional", extra_in_channels=32, time_embedding_dim=None)
    x = torch.randn(1, 2, 128, generator=gen(2))
    with torch.no_grad():
        assert (d(x, torch.tensor(500)).sample - k(x, torch.tensor(500)).sample).abs().max() < 1e-4


def test_harmonai_layout_loads_without_time_embedding_dim(tmp_path):
    # Harmonai's checkpoints have an 8-frequency Fourier embedding and configs without time_embedding_dim:
    # Diffusers 0.42 cannot build them (64 channels into an 18-channel block); we read the width from
    # extra_in_channels and record it, so the saved folder loads in Diffusers too.
    d, _ = unet_pair()
    d.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    config["time_embedding_dim"] = None
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception):
        diffusers.UNet1DModel.from_pretrained(tmp_path / "unet")(torch.randn(1, 2, 64), 0.5)
    ours = UNet1DModel.from_pretrained(tmp_path / "unet")
    assert ours.config.time_embedding_dim == 16 and ours.time_proj.weight.shape == (8,)
    x = torch.randn(1, 2, 64, generator=gen(3))
    with torch.no_grad():
        assert (ours(x, torch.tensor(0.5)).sample - d(x, torch.tensor(0.5)).sample).abs().max() < 1e-4
    ours.save_pretrained(tmp_path / "again")
    back = diffusers.UNet1DModel.from_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert (back(x, torch.tensor(0.5)).sample - d(x, torch.tensor(0.5)).sample).abs().max() < 1e-4


@pytest.mark.parametrize("over, match", [
    (dict(down_block_types=["DownResnetBlock1D", "DownBlock1D", "AttnDownBlock1D"]), "down_block_types='DownResnetBlock1D'"),
    (dict(mid_block_type="ValueFunctionMidBlock1D"), "mid_block_type"),
    (dict(out_block_type="OutConv1DBlock"), "out_block_type"),
    (dict(use_timestep_embedding=True), "use_timestep_embedding"),
    (dict(extra_in_channels=8), "extra_in_channels=8 must equal the width of the time embedding"),
    (dict(block_out_channels=(32, 32)), "same length"),
    (dict(time_embedding_type="learned"), "time_embedding_type"),
])
def test_unet_bad_config(over, match):
    with pytest.raises(ValueError, match=match):
        UNet1DModel(**{**UNET, **over})


def test_unet_bad_sample():
    _, k = unet_pair()
    with pytest.raises(ValueError, match="multiple of 8"):
        k(torch.randn(1, 2, 100), 0.5)
    with pytest.raises(ValueError, match="batch, channels, length"):
        k(torch.randn(2, 100), 0.5)


# ---------------------------------------------------------------- the pipeline
def test_default_matches_diffusers(pair):
    a, b = both(*pair)
    assert b.shape == (1, 2, 512) and b.dtype == np.float32
    check(a, b)


def test_odd_length_is_padded_and_cropped(pair):
    # 0.0301 s = 481.6 samples: generated as 488 (a multiple of 8), cut back to 481
    a, b = both(*pair, batch_size=2, audio_length_in_s=0.0301)
    assert b.shape == (2, 2, 481)
    check(a, b)


def test_generator_list_gives_each_item_its_noise(pair):
    a, b = both(*pair, n=2, batch_size=2)
    check(a, b)
    single = pair[1](generator=gen(1), num_inference_steps=4).audios
    np.testing.assert_allclose(single[0], b[1], atol=1e-5)


def test_scheduler_swap():
    # Diffusers casts the timesteps to the UNet's float dtype and skips scale_model_input, so only schedulers
    # that take float timesteps and scale nothing compare; DPM-Solver++ is one
    a, b = both(*pipes("DPMSolverMultistepScheduler", prediction_type="v_prediction"), num_inference_steps=3)
    check(a, b)


def test_scheduler_with_integer_timesteps_and_input_scaling_runs():
    # where Diffusers' Dance Diffusion fails (DDIM indexes its tables with the float timesteps) or skips the
    # scheduler's input scaling and initial sigma (Euler), the kernel's loop runs them as any pipeline does
    _, ours = pipes("DDIMScheduler")
    assert ours(generator=gen(0), num_inference_steps=3).audios.shape == (1, 2, 512)
    _, euler = pipes("EulerDiscreteScheduler")
    seen = []
    euler.unet.register_forward_pre_hook(lambda m, args: seen.append(float(args[0].std())))
    euler(generator=gen(0), num_inference_steps=2)
    sigma = float(euler.scheduler.sigmas[0])
    assert sigma > 10 and abs(seen[0] - sigma / (sigma**2 + 1) ** 0.5) < 0.1  # noise x sigma, input / sqrt(sigma^2+1)


def test_output_types_and_tuple(pair):
    ours = pair[1]
    pt = ours(generator=gen(0), num_inference_steps=2, output_type="pt").audios
    arr = ours(generator=gen(0), num_inference_steps=2).audios
    assert isinstance(pt, torch.Tensor) and np.array_equal(pt.numpy(), arr)
    out = ours(generator=gen(0), num_inference_steps=2, return_dict=False)
    assert isinstance(out, tuple) and np.array_equal(out[0], arr)
    assert isinstance(ours(generator=gen(0), num_inference_steps=2), AudioPipelineOutput)
    assert ours.sampling_rate == 16000


def test_folders_both_ways(pair, tmp_path):
    ref, _ = pair
    ref.save_pretrained(tmp_path / "theirs")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded) is DanceDiffusionPipeline and type(loaded.unet) is UNet1DModel
    assert type(loaded.scheduler).__module__.startswith("kernel_sched_pndm")
    loaded.set_progress_bar_config(disable=True)
    check(*both(ref, loaded))
    loaded.save_pretrained(tmp_path / "ours")
    back = diffusers.DanceDiffusionPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    check(*both(back, loaded))
    assert type(kernel.load("dance-diffusion", tmp_path / "ours")) is DanceDiffusionPipeline


@pytest.mark.parametrize("kwargs, match", [
    (dict(audio_length_in_s=0.001), r"too short: this UNet needs at least 0.0015 s \(24 samples at 16000 Hz\)"),
    (dict(audio_length_in_s="1"), "audio_length_in_s must be a number"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(output_type="pil"), "output_type"),
    (dict(generator=[torch.Generator()] * 2), "generator"),
])
def test_bad_call_arguments(pair, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pair[1](num_inference_steps=2, **kwargs)


def test_missing_sample_rate_is_explained():
    _, k = unet_pair(sample_rate=None)
    pipe = DanceDiffusionPipeline(unet=k, scheduler=kernel.component("IPNDMScheduler")())
    with pytest.raises(ValueError, match="no sample_rate"):
        pipe(num_inference_steps=2)
