"""VQModel (MoVQ) against Diffusers' VQModel on tiny random configs: encode, decode with and without
quantisation, codebook lookup, folders both ways, contracts and bad configs."""

from __future__ import annotations

import pytest
import torch

from kernel_contracts import AutoencoderContract
from kernel_kandinsky import VQModel

diffusers = pytest.importorskip("diffusers")

MOVQ = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
            num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
            vq_embed_dim=4)
VARIANTS = {
    "movq": MOVQ,
    "group_norm": {**MOVQ, "norm_type": "group", "vq_embed_dim": 3, "layers_per_block": 2},
    "plain_stages_no_mid_attention": {**MOVQ, "down_block_types": ["DownEncoderBlock2D"] * 2,
                                      "up_block_types": ["UpDecoderBlock2D"] * 2, "mid_block_add_attention": False},
    "codebook_lookup": {**MOVQ, "lookup_from_codebook": True},
}


def pair(name: str = "movq"):
    torch.manual_seed(0)
    ref = diffusers.VQModel(**VARIANTS[name]).eval()
    with torch.device("meta"):
        ours = VQModel(**VARIANTS[name]).eval()
    ours.load_state_dict({k: v.clone() for k, v in ref.state_dict().items()}, strict=True, assign=True)
    return ref, ours


def _max(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("name", ["movq", "group_norm", "plain_stages_no_mid_attention"])
def test_encode_decode_match_diffusers(name):
    ref, ours = pair(name)
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    h_ref, h = ref.encode(x).latents, ours.encode(x).latents
    assert h.shape == (2, VARIANTS[name]["vq_embed_dim"], 16, 12)
    assert _max(h, h_ref) < 1e-5
    for force in (False, True):
        a, b = ref.decode(h_ref, force_not_quantize=force), ours.decode(h_ref, force_not_quantize=force)
        assert _max(b.sample, a.sample) < 1e-5
        assert _max(b.commit_loss.reshape(-1), a.commit_loss.reshape(-1)) < 1e-6
    assert _max(ours(x).sample, ref(x).sample) < 1e-5
    # Quantising changes the input of the decoder: the two decodes must differ on random latents.
    assert _max(ours.decode(h, force_not_quantize=True).sample, ours.decode(h).sample) > 1e-4


@torch.no_grad()
def test_decode_from_codebook_indices():
    ref, ours = pair("codebook_lookup")
    indices = torch.randint(0, 12, (2 * 8 * 8,), generator=torch.Generator().manual_seed(3))
    shape = (2, 8, 8, 4)
    a = ref.decode(indices, force_not_quantize=True, shape=shape).sample
    b = ours.decode(indices, force_not_quantize=True, shape=shape).sample
    assert b.shape == (2, 3, 16, 16) and _max(a, b) < 1e-5


@torch.no_grad()
def test_quantizer_snaps_to_codebook():
    _, ours = pair()
    z = torch.randn(1, 4, 3, 3)
    z_q, loss, (_, _, idx) = ours.quantize(z)
    codebook = ours.quantize.embedding.weight
    assert torch.allclose(z_q.permute(0, 2, 3, 1).reshape(-1, 4), codebook[idx])
    nearest = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 4), codebook).argmin(1)
    assert torch.equal(idx, nearest) and loss.item() > 0


def test_folders_both_ways(tmp_path):
    ref, ours = pair()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref.save_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    loaded = VQModel.from_pretrained(tmp_path / "theirs")
    back = diffusers.VQModel.from_pretrained(tmp_path / "ours")
    assert loaded.config["norm_type"] == "spatial" and back.config.norm_type == "spatial"
    with torch.no_grad():
        assert _max(loaded(x).sample, ref(x).sample) < 1e-5
        assert _max(back(x).sample, ours(x).sample) < 1e-5


def test_latent_space_protocol():
    _, ours = pair()
    assert ours.spatial_compression_ratio == 2
    z = torch.randn(1, 4, 4, 4)
    assert torch.allclose(ours.normalize_latents(z), z * 0.18215)
    assert torch.allclose(ours.denormalize_latents(ours.normalize_latents(z)), z, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ({"down_block_types": ["DownEncoderBlock2D", "CrossAttnDownBlock2D"]}, "down_block_types"),
    ({"up_block_types": ["AttnUpDecoderBlock2D", "UpBlock2D"]}, "up_block_types"),
    ({"norm_type": "layer"}, "norm_type"),
    ({"block_out_channels": [32]}, "same length"),
])
def test_bad_config_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        VQModel(**{**MOVQ, **bad})


def test_encode_wrong_rank_is_a_clear_error():
    _, ours = pair()
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        ours.encode(torch.zeros(3, 16, 16))


def tiny_movq():
    torch.manual_seed(0)
    return VQModel(**MOVQ)


class TestVQModelContracts(AutoencoderContract):
    component = tiny_movq

    def contract_inputs(self, model, batch_size, generator):
        return {"x": torch.rand(batch_size, 3, 16, 16, generator=generator) * 2 - 1}
