"""FluxTransformer2DModel against Diffusers (the oracle): same weights, same outputs."""

import pytest
import torch

from kernel_flux import FluxTransformer2DModel

diffusers = pytest.importorskip("diffusers")


def config(guidance: bool):
    return dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                guidance_embeds=guidance)


def _pair(cfg):
    torch.manual_seed(0)
    theirs = diffusers.FluxTransformer2DModel(**cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = FluxTransformer2DModel(**cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _ids(rows, cols):
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(-1, 3)


@pytest.mark.parametrize("guidance", [False, True], ids=["schnell", "dev"])
@pytest.mark.parametrize("batch,rows,cols,text", [(1, 4, 4, 7), (2, 3, 5, 4)])
def test_forward_matches_diffusers(guidance, batch, rows, cols, text):
    ours, theirs = _pair(config(guidance))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, rows * cols, 16, generator=g)
    ctx = torch.randn(batch, text, 32, generator=g)
    pooled = torch.randn(batch, 32, generator=g)
    kwargs = dict(timestep=torch.rand(batch, generator=g), img_ids=_ids(rows, cols), txt_ids=torch.zeros(text, 3))
    if guidance:
        kwargs["guidance"] = torch.full((batch,), 3.5)
    with torch.no_grad():
        expected = theirs(x, ctx, pooled, **kwargs).sample
        got = ours(x, ctx, pooled, **kwargs).sample
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_sliced_and_math_backends_agree():
    ours, _ = _pair(config(False))
    x, ctx, pooled = torch.randn(2, 12, 16), torch.randn(2, 5, 32), torch.randn(2, 32)
    kw = dict(timestep=torch.tensor([0.3, 0.9]), img_ids=_ids(3, 4), txt_ids=torch.zeros(5, 3))
    with torch.no_grad():
        ref = ours(x, ctx, pooled, **kw).sample
        ours.set_attention_slice(1)
        sliced = ours(x, ctx, pooled, **kw).sample
        ours.set_attention_backend("math")
        math = ours(x, ctx, pooled, **kw).sample
    torch.testing.assert_close(sliced, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(math, ref, atol=1e-5, rtol=0)


def test_guidance_mismatch_errors():
    schnell, _ = _pair(config(False))
    dev, _ = _pair(config(True))
    x, ctx, pooled = torch.randn(1, 4, 16), torch.randn(1, 3, 32), torch.randn(1, 32)
    kw = dict(timestep=torch.tensor([0.5]), img_ids=_ids(2, 2), txt_ids=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="guidance_embeds=False"):
        schnell(x, ctx, pooled, guidance=torch.tensor([3.5]), **kw)
    with pytest.raises(ValueError, match="guidance_embeds=True"):
        dev(x, ctx, pooled, **kw)
    with pytest.raises(ValueError, match="img_ids"):
        schnell(x, ctx, pooled, timestep=kw["timestep"], img_ids=_ids(3, 2), txt_ids=kw["txt_ids"])
    with pytest.raises(ValueError, match="axes_dims_rope"):
        FluxTransformer2DModel(**dict(config(False), axes_dims_rope=[4, 4, 4]))


def test_rotary_layers_match_diffusers():
    from diffusers.models.embeddings import FluxPosEmbed as RefPosEmbed
    from diffusers.models.embeddings import apply_rotary_emb as ref_apply

    from kernel_flux.rotary import FluxPosEmbed, apply_rotary_emb

    ids = torch.cat([torch.zeros(3, 3), torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(2.0), torch.arange(4.0),
                                                                    indexing="ij"), -1).reshape(-1, 3)])
    ours, theirs = FluxPosEmbed(10000, [4, 6, 6])(ids), RefPosEmbed(10000, [4, 6, 6])(ids)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    x = torch.randn(2, 3, ids.shape[0], 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(apply_rotary_emb(x, ours), ref_apply(x, theirs), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="ids must have shape"):
        FluxPosEmbed(10000, [4, 6, 6])(ids[:, :2])
