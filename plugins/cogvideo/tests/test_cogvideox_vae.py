"""AutoencoderKLCogVideoX against Diffusers' on the same random weights: frame batching, slicing, tiling, folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cog_fixtures as fx  # noqa: E402
from cog_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")

from kernel_cogvideo import AutoencoderKLCogVideoX  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _pair(**extra):
    cfg = {**fx.VAE, **extra}
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLCogVideoX(**cfg).eval()
    ours = AutoencoderKLCogVideoX(**cfg).eval()
    fx.transfer(ref, ours)
    return ref, ours


def _video(frames, size=16, batch=2, seed=1):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames", [1, 9, 17])  # one frame batch; remainder folded into the first; two batches
def test_encode_decode_match_diffusers(frames):
    ref, ours = _pair()
    x = _video(frames)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist
        got = ours.encode(x).latent_dist
        torch.testing.assert_close(got.mean, expected.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.logvar, expected.logvar, atol=1e-5, rtol=0)
        assert got.mean.shape == (2, 4, (frames - 1) // 4 + 1, 2, 2)
        z = expected.mode()
        decoded = ours.decode(z).sample
        torch.testing.assert_close(decoded, ref.decode(z).sample, atol=1e-5, rtol=0)
        assert decoded.shape == (2, 3, frames, 16, 16)


def test_decode_in_latent_frame_batches_with_quant_convs():
    ref, ours = _pair(use_quant_conv=True, use_post_quant_conv=True, latent_channels=3)
    z = torch.randn(1, 3, 5, 2, 2, generator=torch.Generator().manual_seed(3))  # batches of 3 + 2 latent frames
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(z).sample, ref.decode(z).sample, atol=1e-5, rtol=0)
        x = _video(9, batch=1)
        torch.testing.assert_close(ours(x).sample, ref(x).sample, atol=1e-5, rtol=0)


def test_slicing_and_tiling_match_diffusers():
    ref, ours = _pair()
    x = _video(5, size=48)
    with torch.no_grad():
        ours.enable_slicing()
        ref.enable_slicing()
        torch.testing.assert_close(ours.encode(x).latent_dist.mean, ref.encode(x).latent_dist.mean, atol=1e-5, rtol=0)
        ours.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
        ref.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
        expected = ref.encode(x).latent_dist.mean
        torch.testing.assert_close(ours.encode(x).latent_dist.mean, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.decode(expected).sample, ref.decode(expected).sample, atol=1e-5, rtol=0)
        ours.disable_tiling()
        ours.disable_slicing()
        assert not ours.use_tiling and not ours.use_slicing


def test_folders_both_ways(tmp_path):
    ref, ours = _pair()
    x = _video(5, batch=1)
    ref.save_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    loaded = AutoencoderKLCogVideoX.from_pretrained(tmp_path / "ref").eval()
    back = diffusers.AutoencoderKLCogVideoX.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        expected = ref(x).sample
        torch.testing.assert_close(loaded(x).sample, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(back(x).sample, expected, atol=1e-5, rtol=0)


def test_latent_scaling():
    _, ours = _pair()
    z = torch.randn(1, 4, 2, 2, 2)
    torch.testing.assert_close(ours.normalize_latents(z), z * fx.VAE.get("scaling_factor", 1.15258426))
    torch.testing.assert_close(ours.denormalize_latents(ours.normalize_latents(z)), z)


def test_bad_inputs():
    _, ours = _pair()
    with pytest.raises(ValueError, match="x must be a video"):
        ours.encode(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="z must be video latents"):
        ours.decode(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="down block type"):
        AutoencoderKLCogVideoX(**{**fx.VAE, "down_block_types": ("DownEncoderBlock2D",) * 4})
    with pytest.raises(ValueError, match="same length"):
        AutoencoderKLCogVideoX(**{**fx.VAE, "block_out_channels": (8, 8)})


def test_large_input_conv_chunking_is_exact(monkeypatch):
    import kernel_cogvideo.autoencoder as ae

    _, ours = _pair()
    x = _video(9, batch=1)
    with torch.no_grad():
        whole = ours(x).sample
        monkeypatch.setattr(ae, "_SAFE_CONV_GIB", 1e-5)  # the full-size conv inputs count as "large": split in time
        splits = []
        real_chunk = torch.chunk
        monkeypatch.setattr(torch, "chunk", lambda t, n, dim=0: (dim == 2 and splits.append(n)) or real_chunk(t, n, dim=dim))
        chunked = ours(x).sample
    assert any(n > 1 for n in splits)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
