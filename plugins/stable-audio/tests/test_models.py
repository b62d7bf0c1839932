"""AutoencoderOobleck, StableAudioDiTModel and StableAudioProjectionModel against Diffusers (same weights)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sa_fixtures import DIT, OOBLECK, dit_pair, oobleck_pair, projection_pair  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _max(a, b):
    return (a - b).abs().max().item()


@torch.no_grad()
def test_oobleck_encode_decode_match_diffusers():
    ours, theirs = oobleck_pair()
    x = torch.randn(2, 2, 36, generator=torch.Generator().manual_seed(1))
    a, b = ours.encode(x).latent_dist, theirs.encode(x).latent_dist
    assert a.mean.shape == (2, OOBLECK["decoder_input_channels"], 9)
    assert _max(a.mean, b.mean) < ATOL and _max(a.std, b.std) < ATOL
    assert _max(a.sample(torch.Generator().manual_seed(3)), b.sample(torch.Generator().manual_seed(3))) < ATOL
    assert _max(a.kl(), b.kl()) < ATOL
    z = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(2))
    wa, wb = ours.decode(z).sample, theirs.decode(z).sample
    assert wa.shape == (2, 2, 28) and wa.abs().max() > 1e-3
    assert _max(wa, wb) < ATOL
    assert _max(ours(x).sample, theirs(x).sample) < ATOL
    assert ours.hop_length == theirs.hop_length == 4 and ours.spatial_compression_ratio == 4


@torch.no_grad()
def test_oobleck_slicing_and_tiling_match_diffusers():
    ours, theirs = oobleck_pair(1)
    z = torch.randn(2, 4, 40, generator=torch.Generator().manual_seed(2))
    plain = ours.decode(z).sample
    ours.enable_slicing()
    assert _max(ours.decode(z).sample, plain) < ATOL  # conv kernels may sum in another order per batch size
    for m in (ours, theirs):
        m.use_tiling = True
        m.tile_latent_min_length, m.tile_latent_overlap = 16, 4
        m.tile_sample_min_length, m.tile_sample_overlap = 64, 16
    assert _max(ours.decode(z).sample, theirs.decode(z).sample) < ATOL
    x = torch.randn(2, 2, 160, generator=torch.Generator().manual_seed(4))
    assert _max(ours.encode(x).latent_dist.mean, theirs.encode(x).latent_dist.mean) < ATOL


def test_oobleck_folders_both_ways(tmp_path):
    from diffusers import AutoencoderOobleck as Theirs

    from kernel_stable_audio import AutoencoderOobleck

    ours, theirs = oobleck_pair(2)
    z = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(0))
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        want = theirs.decode(z).sample
        assert _max(Theirs.from_pretrained(tmp_path / "ours").decode(z).sample, want) < ATOL
        assert _max(AutoencoderOobleck.from_pretrained(tmp_path / "theirs").decode(z).sample, want) < ATOL


def test_oobleck_bad_config_and_input():
    from kernel_stable_audio import AutoencoderOobleck

    with pytest.raises(ValueError, match="channel_multiples"):
        AutoencoderOobleck(**{**OOBLECK, "channel_multiples": [1]})
    with pytest.raises(ValueError, match="decoder_input_channels"):
        AutoencoderOobleck(**{**OOBLECK, "decoder_input_channels": 3})
    ours, _ = oobleck_pair()
    with pytest.raises(ValueError, match="audio_channels"):
        ours.encode(torch.zeros(2, 36))


def _dit_inputs(batch=2, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, 4, length, generator=g), timestep=torch.rand(batch, generator=g),
                encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                global_hidden_states=torch.randn(batch, 1, 32, generator=g))


@torch.no_grad()
def test_dit_matches_diffusers_with_rotary_and_masks():
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    from kernel_stable_audio import stable_audio_rotary_embedding

    ours, theirs = dit_pair()
    ex = _dit_inputs()
    rotary = get_1d_rotary_pos_embed(DIT["attention_head_dim"] // 2, 17, use_real=True, repeat_interleave_real=False)
    mine = stable_audio_rotary_embedding(DIT["attention_head_dim"] // 2, 17)
    assert _max(rotary[0], mine[0]) == 0 and _max(rotary[1], mine[1]) == 0
    a = ours(**ex, rotary_embedding=mine, return_dict=False)[0]
    b = theirs(**ex, rotary_embedding=rotary, return_dict=False)[0]
    assert a.shape == (2, 4, 16) and _max(a, b) < ATOL
    assert _max(ours(**ex).sample, theirs(**ex).sample) < ATOL  # no rotary
    # Diffusers' pipeline passes one timestep for the whole batch
    one = dict(ex, timestep=ex["timestep"][:1])
    assert _max(ours(**one, rotary_embedding=mine).sample, theirs(**one, rotary_embedding=rotary).sample) < ATOL
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    assert _max(ours(**ex, attention_mask=mask).sample, theirs(**ex, attention_mask=mask).sample) < ATOL


@torch.no_grad()
def test_dit_attention_switches_keep_rotary():
    from kernel_stable_audio import stable_audio_rotary_embedding

    ours, _ = dit_pair()
    ex = dict(_dit_inputs(), rotary_embedding=stable_audio_rotary_embedding(DIT["attention_head_dim"] // 2, 17))
    want = ours(**ex).sample
    assert _max(ours(**{**ex, "rotary_embedding": None}).sample, want) > 1e-3  # the rotation matters
    for switch, arg in (("set_attention_backend", "math"), ("set_attention_slice", "max"),
                        ("set_attention_slice", None), ("set_default_attn_processor", None)):
        getattr(ours, switch)(*([] if switch == "set_default_attn_processor" else [arg]))
        assert _max(ours(**ex).sample, want) < ATOL, switch


def test_dit_folders_both_ways(tmp_path):
    from diffusers import StableAudioDiTModel as Theirs

    from kernel_stable_audio import StableAudioDiTModel

    ours, theirs = dit_pair(1)
    ex = _dit_inputs(1)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        want = theirs(**ex).sample
        assert _max(Theirs.from_pretrained(tmp_path / "ours")(**ex).sample, want) < ATOL
        assert _max(StableAudioDiTModel.from_pretrained(tmp_path / "theirs")(**ex).sample, want) < ATOL


def test_dit_rejects_bad_head_grouping():
    from kernel_stable_audio import StableAudioDiTModel

    with pytest.raises(ValueError, match="num_key_value_attention_heads"):
        StableAudioDiTModel(**{**DIT, "num_key_value_attention_heads": 3})


@torch.no_grad()
def test_projection_matches_diffusers(tmp_path):
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel as Theirs

    from kernel_stable_audio import StableAudioProjectionModel

    ours, theirs = projection_pair()
    text = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(0))
    start, end = torch.tensor([0.0, 3.5]), torch.tensor([10.0, 600.0])  # 600 is clamped to max_value
    a, b = ours(text, start, end), theirs(text, start, end)
    assert a.text_hidden_states.shape == (2, 5, 16) and a.seconds_end_hidden_states.shape == (2, 1, 16)
    for name in ("text_hidden_states", "seconds_start_hidden_states", "seconds_end_hidden_states"):
        assert _max(getattr(a, name), getattr(b, name)) < ATOL
    assert ours(text).seconds_start_hidden_states is None
    ours.save_pretrained(tmp_path / "ours")
    back = Theirs.from_pretrained(tmp_path / "ours")(text, start, end)
    assert _max(back.seconds_start_hidden_states, b.seconds_start_hidden_states) < ATOL
    with pytest.raises(ValueError, match="max_value"):
        StableAudioProjectionModel(24, 16, min_value=5, max_value=5)
