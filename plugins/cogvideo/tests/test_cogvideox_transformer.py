"""CogVideoXTransformer3DModel against Diffusers' on the same random weights, folders both ways, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cog_fixtures as fx  # noqa: E402
from cog_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
from diffusers.models.embeddings import get_3d_rotary_pos_embed as ref_rope  # noqa: E402
from diffusers.models.embeddings import get_3d_sincos_pos_embed as ref_sincos  # noqa: E402

from kernel_cogvideo import CogVideoXTransformer3DModel, get_3d_rotary_pos_embed, get_3d_sincos_pos_embed  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _pair(variant):
    cfg = fx.transformer_config(variant)
    torch.manual_seed(0)
    ref = diffusers.CogVideoXTransformer3DModel(**cfg).eval()
    ours = CogVideoXTransformer3DModel(**cfg).eval()
    fx.transfer(ref, ours)
    return ref, ours


def _inputs(variant, batch=2):
    g = torch.Generator().manual_seed(1)
    frames = 4 if variant == "patch_t" else 3
    kw = dict(hidden_states=torch.randn(batch, frames, 4, 8, 8, generator=g),
              encoder_hidden_states=torch.randn(batch, 7, 16, generator=g), timestep=torch.tensor([10, 500][:batch]))
    if variant == "patch_t":
        kw["ofs"] = torch.tensor([2.0] * batch)
        kw["image_rotary_emb"] = ref_rope(16, None, (4, 4), 2, grid_type="slice", max_size=(4, 4))
    elif variant != "sincos":
        kw["image_rotary_emb"] = ref_rope(16, ((0, 0), (4, 4)), (4, 4), frames)
    return kw


@pytest.mark.parametrize("variant", list(fx.VARIANTS))
def test_matches_diffusers(variant):
    ref, ours = _pair(variant)
    kw = _inputs(variant)
    with torch.no_grad():
        expected = ref(**kw, return_dict=False)[0]
        got = ours(**kw).sample
    assert got.shape == expected.shape == kw["hidden_states"].shape
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_position_tables_match_diffusers():
    torch.testing.assert_close(get_3d_sincos_pos_embed(32, (6, 4), 3, 1.875, 1.0),
                               ref_sincos(32, (6, 4), 3, 1.875, 1.0), atol=1e-6, rtol=0)
    for ours, ref in zip(get_3d_rotary_pos_embed(16, ((0, 0), (3, 5)), (3, 5), 4),
                         ref_rope(16, ((0, 0), (3, 5)), (3, 5), 4)):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    for ours, ref in zip(get_3d_rotary_pos_embed(16, None, (3, 5), 2, grid_type="slice", max_size=(3, 5)),
                         ref_rope(16, None, (3, 5), 2, grid_type="slice", max_size=(3, 5))):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_other_resolution_recomputes_sincos_table():
    ref, ours = _pair("sincos")
    g = torch.Generator().manual_seed(2)
    kw = dict(hidden_states=torch.randn(1, 2, 4, 12, 8, generator=g),
              encoder_hidden_states=torch.randn(1, 7, 16, generator=g), timestep=torch.tensor([3]))
    with torch.no_grad():
        torch.testing.assert_close(ours(**kw).sample, ref(**kw).sample, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["learned", "patch_t"])
def test_folders_both_ways(tmp_path, variant):
    ref, ours = _pair(variant)
    kw = _inputs(variant, batch=1)
    ref.save_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    loaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "ref").eval()
    back = diffusers.CogVideoXTransformer3DModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        expected = ref(**kw).sample
        torch.testing.assert_close(loaded(**kw).sample, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(back(**kw).sample, expected, atol=1e-5, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="use_learned_positional_embeddings"):
        CogVideoXTransformer3DModel(**{**fx.TRANSFORMER, "use_learned_positional_embeddings": True})
    _, ours = _pair("learned")
    kw = _inputs("learned", batch=1)
    with pytest.raises(ValueError, match="learned positional embeddings"):
        ours(**{**kw, "hidden_states": torch.randn(1, 3, 4, 8, 12), "image_rotary_emb": None})
    with pytest.raises(ValueError, match="patch_size"):
        ours(**{**kw, "hidden_states": torch.randn(1, 3, 4, 8, 7)})
    with pytest.raises(ValueError, match="hidden_states must be"):
        ours(**{**kw, "hidden_states": torch.randn(1, 4, 8, 8)})
    _, t15 = _pair("patch_t")
    with pytest.raises(ValueError, match="pass ofs"):
        t15(**{**_inputs("patch_t", batch=1), "ofs": None})
    with pytest.raises(ValueError, match="grid_type"):
        get_3d_rotary_pos_embed(16, None, (2, 2), 2, grid_type="cubic")


def test_attention_switches_keep_the_cogvideox_processor():
    _, ours = _pair("rotary")
    kw = _inputs("rotary")
    with torch.no_grad():
        expected = ours(**kw).sample
        for switch in (lambda: ours.set_attention_backend("math"), lambda: ours.set_attention_slice(1),
                       ours.fuse_qkv_projections):
            switch()
            assert type(ours.transformer_blocks[0].attn1.processor).__name__ == "CogVideoXAttnProcessor"
            torch.testing.assert_close(ours(**kw).sample, expected, atol=1e-5, rtol=0)
    ours.unfuse_qkv_projections()
    ours.train()
    ours.enable_gradient_checkpointing()
    out = ours(**kw).sample
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=0)
    out.mean().backward()
    assert ours.proj_out.weight.grad.abs().sum() > 0
