"""AutoencoderKL and AutoencoderTiny against Diffusers (the oracle), plus slicing, tiling, training paths and errors."""

from __future__ import annotations

import functools

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from kernel_autoencoders import AutoencoderKL, AutoencoderTiny, DiagonalGaussianDistribution  # noqa: E402

KL = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
          down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
          up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32)
KL_VARIANTS = {
    "sd": KL,
    "no_quant_no_mid_attn": {**KL, "use_quant_conv": False, "use_post_quant_conv": False,
                             "mid_block_add_attention": False, "layers_per_block": 2},
}
TINY = dict(encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def _reference(kind: str, name: str = "sd"):
    torch.manual_seed(0)
    if kind == "tiny":
        return diffusers.AutoencoderTiny(**TINY).eval()
    return diffusers.AutoencoderKL(**KL_VARIANTS[name]).eval()


def _pair(kind: str = "kl", name: str = "sd"):
    ref = _reference(kind, name)
    cls, cfg = (AutoencoderTiny, TINY) if kind == "tiny" else (AutoencoderKL, KL_VARIANTS[name])
    with torch.device("meta"):
        ours = cls(**cfg).eval()
    ours.load_state_dict({k: v.clone() for k, v in ref.state_dict().items()}, strict=True, assign=True)
    return ref, ours


def _close(a, b, atol=1e-4):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("name", list(KL_VARIANTS))
@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (3, 3, 16, 24)])
def test_kl_encode_decode_forward_match(name, shape):
    ref, ours = _pair("kl", name)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    a, b = ref.encode(x).latent_dist, ours.encode(x).latent_dist
    _close(b.mean, a.mean)
    _close(b.std, a.std)
    _close(b.kl(), a.kl(), 1e-3)
    probe = torch.randn(a.mean.shape, generator=torch.Generator().manual_seed(7))
    _close(b.nll(probe), a.nll(probe), 1e-2)
    _close(b.sample(torch.Generator().manual_seed(5)), a.sample(torch.Generator().manual_seed(5)))
    z = torch.randn(shape[0], 4, shape[2] // 2, shape[3] // 2)
    _close(ours.decode(z).sample, ref.decode(z).sample)
    _close(ours(x).sample, ref(x).sample)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    _close(ours(x, sample_posterior=True, generator=g1).sample, ref(x, sample_posterior=True, generator=g2).sample)


def test_posterior_kl_between_two_distributions():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 8, 3, 3, generator=g), torch.randn(2, 8, 3, 3, generator=g)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution as Ref

    _close(DiagonalGaussianDistribution(p).kl(DiagonalGaussianDistribution(q)), Ref(p).kl(Ref(q)), 1e-4)
    det = DiagonalGaussianDistribution(p, deterministic=True)
    assert torch.equal(det.sample(), det.mean) and float(det.kl().sum()) == 0.0


@torch.no_grad()
def test_kl_slicing_is_exact_and_tiling_matches_diffusers():
    ref, ours = _pair("kl")
    x = torch.randn(3, 3, 16, 24, generator=torch.Generator().manual_seed(2))
    z = torch.randn(3, 4, 8, 12)
    plain_enc, plain_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
    ours.enable_slicing()
    _close(ours.encode(x).latent_dist.mean, plain_enc, 1e-5)  # batched kernels round differently
    _close(ours.decode(z).sample, plain_dec, 1e-5)
    ours.disable_slicing()

    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    z = torch.randn(2, 4, 12, 20, generator=torch.Generator().manual_seed(4))
    try:
        for m in (ref, ours):
            m.enable_tiling()
            m.tile_sample_min_size, m.tile_latent_min_size = 16, 8
        tiled = ours.encode(x).latent_dist.mean
        _close(tiled, ref.encode(x).latent_dist.mean, 1e-5)
        _close(ours.decode(z).sample, ref.decode(z).sample, 1e-5)
        ours.enable_slicing()
        _close(ours.decode(z).sample, ref.decode(z).sample, 1e-5)
        # tiles really were used: the tiled result differs from one whole pass
        ours.disable_tiling()
        assert not torch.allclose(ours.encode(x).latent_dist.mean[..., :20, :28], tiled, atol=1e-3)
    finally:
        ref.disable_tiling()
        ref.tile_sample_min_size, ref.tile_latent_min_size = 32, 16


@torch.no_grad()
def test_tiny_matches_diffusers_including_tiling():
    ref, ours = _pair("tiny")
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    _close(ours.encode(x).latents, ref.encode(x).latents)
    _close(ours(x).sample, ref(x).sample)
    z = torch.randn(2, 4, 4, 6)
    _close(ours.decode(z).sample, ref.decode(z).sample)
    lat = torch.randn(2, 4, 3, 3) * 4
    _close(ours.scale_latents(lat), ref.scale_latents(lat), 0)
    _close(ours.unscale_latents(ours.scale_latents(lat)), ref.unscale_latents(ref.scale_latents(lat)), 0)
    ours.enable_slicing()
    _close(ours.decode(z).sample, ref.decode(z).sample)
    try:
        for m in (ref, ours):
            m.enable_tiling()
            m.tile_sample_min_size, m.tile_latent_min_size = 32, 4
        x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))
        _close(ours.encode(x).latents, ref.encode(x).latents, 1e-5)
        z = torch.randn(1, 4, 8, 10)
        _close(ours.decode(z).sample, ref.decode(z).sample, 1e-5)
    finally:
        ref.disable_tiling()
        ref.tile_sample_min_size, ref.tile_latent_min_size = 512, 64
    assert list(ours.config.block_out_channels) == [32, 32, 32, 32] and ours.config.force_upcast is False


@pytest.mark.parametrize("kind", ["kl", "tiny"])
def test_save_load_both_ways(tmp_path, kind):
    ref, ours = _pair(kind)
    cls = AutoencoderTiny if kind == "tiny" else AutoencoderKL
    dcls = diffusers.AutoencoderTiny if kind == "tiny" else diffusers.AutoencoderKL
    ref.save_pretrained(tmp_path / "d")
    ours.save_pretrained(tmp_path / "k", variant="fp16")
    loaded, back = cls.from_pretrained(tmp_path / "d"), dcls.from_pretrained(tmp_path / "k", variant="fp16")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        _close(loaded(x).sample, ref(x).sample)
        _close(back(x).sample, ref(x).sample)
    assert loaded.config.scaling_factor == ref.config.scaling_factor


def test_gradients_and_checkpointing():
    torch.manual_seed(0)
    model = AutoencoderKL(**KL)
    x = torch.randn(2, 3, 16, 16)

    def grads():
        model.zero_grad(set_to_none=True)
        out = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample
        (out.pow(2).mean() + model.encode(x).latent_dist.kl().mean() * 1e-3).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert set(plain) == {n for n, p in model.named_parameters() if p.requires_grad}
    model.enable_gradient_checkpointing()
    for n, g in grads().items():
        assert torch.allclose(g, plain[n], atol=1e-6), n

    tiny = AutoencoderTiny(**TINY)
    tiny.decode(tiny.encode(x).latents).sample.mean().backward()
    assert all(p.grad is not None for p in tiny.parameters())


def test_registered_and_errors():
    import kernel

    assert kernel.component("AutoencoderKL") is AutoencoderKL
    assert kernel.component("AutoencoderTiny") is AutoencoderTiny
    with pytest.raises(ValueError, match="down block type"):
        AutoencoderKL(**{**KL, "down_block_types": ("DownBlock2D", "DownEncoderBlock2D")})
    with pytest.raises(ValueError, match="same length"):
        AutoencoderKL(**{**KL, "block_out_channels": (32,)})
    with pytest.raises(ValueError, match="same length"):
        AutoencoderTiny(num_encoder_blocks=(1, 1))
    _, ours = _pair("kl")
    with pytest.raises(ValueError, match="batch, channels"):
        ours.encode(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="batch, channels"):
        ours.decode(torch.randn(4, 8, 8))
