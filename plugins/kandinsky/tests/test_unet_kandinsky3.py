"""Kandinsky3UNet against Diffusers' Kandinsky3UNet on the tiny config of Diffusers' Kandinsky 3 tests (plus a
three-level variant): same random weights, with and without a text mask, folders both ways, bad configs."""

from __future__ import annotations

import pytest
import torch

from kernel_kandinsky.unet_kandinsky3 import Kandinsky3UNet

diffusers = pytest.importorskip("diffusers")

TINY = dict(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
            block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32)
VARIANTS = {"tiny": TINY,
            "three_levels": {**TINY, "block_out_channels": (16, 32, 32), "layers_per_block": 2, "time_embedding_dim": 8}}


def pair(name: str = "tiny"):
    torch.manual_seed(0)
    ref = diffusers.Kandinsky3UNet(**VARIANTS[name]).eval()
    # Diffusers zero-initialises the norm modulation: randomise every weight so the test sees them all.
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    with torch.device("meta"):
        ours = Kandinsky3UNet(**VARIANTS[name]).eval()
    ours.load_state_dict({k: v.clone() for k, v in ref.state_dict().items()}, strict=True, assign=True)
    return ref, ours


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    text = torch.randn(batch, 7, 32, generator=g)
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[0, 4:] = 0
    return x, text, mask


def _max(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_diffusers(name):
    ref, ours = pair(name)
    x, text, mask = _inputs()
    for t in (torch.tensor(3), torch.tensor([999, 10]), 500):
        a = ref(x, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
        b = ours(x, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
        assert b.shape == x.shape
        assert _max(a, b) < 1e-5
    # The mask matters: hiding tokens changes the prediction.
    unmasked = ours(x, 3, encoder_hidden_states=text, encoder_attention_mask=torch.ones_like(mask)).sample
    assert _max(unmasked, b) > 1e-4
    (tup,) = ours(x, 3, encoder_hidden_states=text, encoder_attention_mask=mask, return_dict=False)
    assert _max(tup, ours(x, 3, encoder_hidden_states=text, encoder_attention_mask=mask).sample) == 0


def test_same_parameter_names_and_count():
    ref, ours = pair()
    assert set(ref.state_dict()) == set(ours.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_folders_both_ways(tmp_path):
    ref, ours = pair()
    x, text, mask = _inputs(1)
    ref.save_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    loaded = Kandinsky3UNet.from_pretrained(tmp_path / "theirs")
    back = diffusers.Kandinsky3UNet.from_pretrained(tmp_path / "ours")
    assert loaded.config["encoder_hid_dim"] == 32 and back.config.encoder_hid_dim == 32
    with torch.no_grad():
        kw = dict(encoder_hidden_states=text, encoder_attention_mask=mask)
        assert _max(loaded(x, 5, **kw).sample, ref(x, 5, **kw).sample) < 1e-5
        assert _max(back(x, 5, **kw).sample, ours(x, 5, **kw).sample) < 1e-5


@pytest.mark.parametrize("bad, message", [
    ({"layers_per_block": 1}, "layers_per_block"),
    ({"layers_per_block": (3, 3)}, "layers_per_block"),
    ({"block_out_channels": (8, 8, 8, 8, 8)}, "block_out_channels"),
    ({"cross_attention_dim": (4, 4)}, "cross_attention_dim"),
])
def test_bad_config(bad, message):
    with pytest.raises(ValueError, match=message):
        Kandinsky3UNet(**{**TINY, **bad})


def test_text_is_required():
    _, ours = pair()
    x, _, _ = _inputs(1)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(x, 1)
