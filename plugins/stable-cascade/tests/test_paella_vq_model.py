"""PaellaVQModel (stage A) against Diffusers' on the same random weights, and the autoencoder contracts."""

from __future__ import annotations

import pytest
import torch

from cascade_fixtures import randomize
from kernel_contracts import AutoencoderContract
from kernel_stable_cascade import PaellaVQModel

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel as RefPaella  # noqa: E402

#: The size of Diffusers' Stable Cascade decoder test VQ-GAN.
TINY = dict(in_channels=3, out_channels=3, up_down_scale_factor=2, levels=2, bottleneck_blocks=1, embed_dim=16,
            latent_channels=4, num_vq_embeddings=12, scale_factor=0.3764)


def pair(**overrides):
    config = dict(TINY, **overrides)
    ours = randomize(PaellaVQModel(**config))
    ours.down_blocks[-1][1].running_var.uniform_(0.5, 2.0)
    ours.down_blocks[-1][1].running_mean.normal_()
    ref = RefPaella(**config).eval()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("levels,bottleneck", [(2, 1), (3, 2)])
def test_parity_with_diffusers(levels, bottleneck):
    ours, ref = pair(levels=levels, bottleneck_blocks=bottleneck, embed_dim=32)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z, zr = ours.encode(x).latents, ref.encode(x).latents
        assert z.shape == (2, 4, 16 // ours.spatial_compression_ratio, 16 // ours.spatial_compression_ratio)
        assert (z - zr).abs().max() < 1e-5
        assert (ours.decode(z).sample - ref.decode(z).sample).abs().max() < 1e-5
        q, qr = ours.decode(z, force_not_quantize=False).sample, ref.decode(z, force_not_quantize=False).sample
        assert (q - qr).abs().max() < 1e-5
        assert (ours(x).sample - ref(x).sample).abs().max() < 1e-5


def test_quantizer_matches_diffusers_loss_and_indices():
    ours, ref = pair()
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    a, loss, (_, _, idx) = ours.vquantizer(z)
    b, loss_ref, (_, _, idx_ref) = ref.vquantizer(z)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(loss, loss_ref, atol=1e-6)
    assert torch.equal(idx.flatten(), idx_ref.flatten())


def test_latent_scale_round_trip():
    ours, _ = pair()
    z = torch.randn(1, 4, 2, 2)
    assert torch.allclose(ours.normalize_latents(z), z / 0.3764)
    assert torch.allclose(ours.denormalize_latents(ours.normalize_latents(z)), z)


def test_folders_both_ways(tmp_path):
    ours, ref = pair()
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        want = ours(x).sample
        assert (RefPaella.from_pretrained(tmp_path / "ours").eval()(x).sample - want).abs().max() < 1e-6
        assert (PaellaVQModel.from_pretrained(tmp_path / "ref").eval()(x).sample - want).abs().max() < 1e-6


def test_bad_inputs():
    ours, _ = pair()
    with pytest.raises(ValueError, match="x must"):
        ours.encode(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="h must"):
        ours.decode(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="levels"):
        PaellaVQModel(**dict(TINY, levels=0))


def tiny_paella():
    torch.manual_seed(0)
    return randomize(PaellaVQModel(**TINY))


class TestPaellaVQModelContracts(AutoencoderContract):
    component = tiny_paella

    def contract_inputs(self, model, batch_size, generator):
        return {"x": torch.rand(batch_size, 3, 16, 16, generator=generator)}
