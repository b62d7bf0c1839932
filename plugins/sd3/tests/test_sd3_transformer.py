"""SD3Transformer2DModel against Diffusers (the oracle): same weights, same outputs."""

import pytest
import torch

from kernel_sd3 import SD3Transformer2DModel

diffusers = pytest.importorskip("diffusers")

TINY = dict(sample_size=32, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
            pos_embed_max_size=16)
SD35 = dict(TINY, dual_attention_layers=(0, 1), qk_norm="rms_norm")


def _pair(config):
    torch.manual_seed(0)
    theirs = diffusers.SD3Transformer2DModel(**config).eval()
    with torch.no_grad():  # move away from the zero-initialised gates so every path matters
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = SD3Transformer2DModel(**config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("config", [TINY, SD35], ids=["sd3", "sd3.5"])
@pytest.mark.parametrize("shape", [(1, 4, 16, 16), (2, 4, 16, 12), (3, 4, 8, 20)])
def test_forward_matches_diffusers(config, shape):
    ours, theirs = _pair(config)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g)
    text = torch.randn(shape[0], 7, 32, generator=g)
    pooled = torch.randn(shape[0], 64, generator=g)
    t = torch.linspace(999, 1, shape[0])
    with torch.no_grad():
        expected = theirs(x, text, pooled, t).sample
        got = ours(x, text, pooled, t).sample
        got_skip = ours(x, text, pooled, t, skip_layers=[1]).sample
        expected_skip = theirs(x, text, pooled, t, skip_layers=[1]).sample
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_skip, expected_skip, atol=1e-4, rtol=0)


def test_pos_embed_table_and_state_dict_keys_match():
    ours, theirs = _pair(SD35)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    torch.testing.assert_close(SD3Transformer2DModel(**SD35).pos_embed.pos_embed, theirs.pos_embed.pos_embed)


def test_backend_switches_keep_joint_attention():
    ours, _ = _pair(SD35)
    x, text, pooled, t = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32), torch.randn(2, 64), torch.tensor([3.0, 9.0])
    with torch.no_grad():
        ref = ours(x, text, pooled, t).sample
        ours.set_attention_slice("max")
        sliced = ours(x, text, pooled, t).sample
        ours.set_attention_backend("math")
        math = ours(x, text, pooled, t).sample
        ours.set_default_attn_processor()
    torch.testing.assert_close(sliced, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(math, ref, atol=1e-5, rtol=0)
    assert all(type(p).__name__ == "JointAttnProcessor" for p in ours.attn_processors.values())


def test_save_load_roundtrip_with_diffusers(tmp_path):
    ours, theirs = _pair(TINY)
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.SD3Transformer2DModel.from_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = SD3Transformer2DModel.from_pretrained(tmp_path / "theirs")
    x, text, pooled, t = torch.randn(1, 4, 16, 16), torch.randn(1, 5, 32), torch.randn(1, 64), torch.tensor([500.0])
    with torch.no_grad():
        torch.testing.assert_close(back(x, text, pooled, t).sample, theirs(x, text, pooled, t).sample, atol=1e-4, rtol=0)
        torch.testing.assert_close(loaded(x, text, pooled, t).sample, theirs(x, text, pooled, t).sample, atol=1e-4, rtol=0)


def test_bad_inputs():
    ours, _ = _pair(TINY)
    text, pooled, t = torch.randn(1, 5, 32), torch.randn(1, 64), torch.tensor([1.0])
    with pytest.raises(ValueError, match="patch_size"):
        ours(torch.randn(1, 4, 15, 16), text, pooled, t)
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        ours(torch.randn(1, 4, 40, 16), text, pooled, t)
    with pytest.raises(ValueError, match="batch sizes"):
        ours(torch.randn(2, 4, 16, 16), text, pooled, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="dual_attention_layers"):
        SD3Transformer2DModel(**dict(TINY, dual_attention_layers=(7,)))
