"""PixArtTransformer2DModel against Diffusers (the oracle): same weights, same outputs."""

import pytest
import torch

from kernel_pixart import PixArtTransformer2DModel

diffusers = pytest.importorskip("diffusers")

BASE = dict(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=24, caption_channels=32, patch_size=2)
ALPHA_512 = dict(BASE, sample_size=8)
ALPHA_1024 = dict(BASE, sample_size=128)  # size conditioning on (resolution, aspect ratio)
SIGMA = dict(BASE, sample_size=8, interpolation_scale=2, use_additional_conditions=False)


def _pair(cfg):
    torch.manual_seed(0)
    theirs = diffusers.PixArtTransformer2DModel(**cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = PixArtTransformer2DModel(**cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("cfg", [ALPHA_512, ALPHA_1024, SIGMA], ids=["alpha-512", "alpha-1024", "sigma"])
@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 4, 8, 12), (2, 4, 16, 6)])
def test_forward_matches_diffusers(cfg, shape):
    ours, theirs = _pair(cfg)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    text = torch.randn(shape[0], 5, 32, generator=g)
    mask = torch.ones(shape[0], 5, dtype=torch.long)
    mask[0, 3:] = 0
    t = torch.randint(0, 1000, (shape[0],), generator=g)
    sizes = {"resolution": torch.tensor([[64.0, 96.0]] * shape[0]), "aspect_ratio": torch.tensor([[1.5]] * shape[0])}
    with torch.no_grad():
        expected = theirs(x, text, t, added_cond_kwargs=sizes, encoder_attention_mask=mask).sample
        got = ours(x, text, t, added_cond_kwargs=sizes, encoder_attention_mask=mask).sample
    assert got.shape == (shape[0], 8, *shape[2:])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_size_conditioning_is_required_for_1024_models():
    ours, _ = _pair(ALPHA_1024)
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        ours(torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="patch_size"):
        _pair(SIGMA)[0](torch.randn(1, 4, 7, 8), torch.randn(1, 5, 32), torch.tensor([1]))
