"""The released Stable Cascade UNet configurations (stabilityai/stable-cascade and stable-cascade-prior, full and
lite, as Diffusers' conversion scripts write them) build here with exactly Diffusers' parameter names and shapes.
Both models are built on the meta device: no memory, no weights."""

from __future__ import annotations

import pytest
import torch

from kernel_stable_cascade import StableCascadeUNet

diffusers = pytest.importorskip("diffusers")

_ATTN = ["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]
_NO_ATTN = ["SDCascadeResBlock", "SDCascadeTimestepBlock"]

_STAGE_C = dict(in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1,
                down_blocks_repeat_mappers=[1, 1], up_blocks_repeat_mappers=[1, 1], block_types_per_layer=[_ATTN, _ATTN],
                clip_text_in_channels=1280, clip_text_pooled_in_channels=1280, clip_image_in_channels=768, clip_seq=4,
                kernel_size=3, dropout=[0.1, 0.1], self_attn=True, timestep_conditioning_type=["sca", "crp"],
                switch_level=[False])
_STAGE_B = dict(in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=1280,
                down_blocks_repeat_mappers=[1, 1, 1, 1], block_types_per_layer=[_NO_ATTN, _NO_ATTN, _ATTN, _ATTN],
                clip_text_pooled_in_channels=1280, clip_seq=4, effnet_in_channels=16, pixel_mapper_in_channels=3,
                kernel_size=3, dropout=[0, 0, 0.1, 0.1], self_attn=True, timestep_conditioning_type=["sca"])

CONFIGS = {
    "prior_full": dict(_STAGE_C, conditioning_dim=2048, block_out_channels=[2048, 2048], num_attention_heads=[32, 32],
                       down_num_layers_per_block=[8, 24], up_num_layers_per_block=[24, 8]),
    "prior_lite": dict(_STAGE_C, conditioning_dim=1536, block_out_channels=[1536, 1536], num_attention_heads=[24, 24],
                       down_num_layers_per_block=[4, 12], up_num_layers_per_block=[12, 4]),
    "decoder_full": dict(_STAGE_B, block_out_channels=[320, 640, 1280, 1280], down_num_layers_per_block=[2, 6, 28, 6],
                         up_num_layers_per_block=[6, 28, 6, 2], up_blocks_repeat_mappers=[3, 3, 2, 2],
                         num_attention_heads=[0, 0, 20, 20]),
    "decoder_lite": dict(_STAGE_B, block_out_channels=[320, 576, 1152, 1152], down_num_layers_per_block=[2, 4, 14, 4],
                         up_num_layers_per_block=[4, 14, 4, 2], up_blocks_repeat_mappers=[2, 2, 2, 2],
                         num_attention_heads=[0, 9, 18, 18]),
}

#: Parameter counts of the released checkpoints (in billions, rounded): stage C 3.6 / 1.0, stage B 1.5 / 0.7.
BILLIONS = {"prior_full": 3.6, "prior_lite": 1.0, "decoder_full": 1.5, "decoder_lite": 0.7}


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_released_config_builds_with_diffusers_names_and_shapes(name):
    with torch.device("meta"):
        ours = StableCascadeUNet(**CONFIGS[name])
        ref = diffusers.StableCascadeUNet(**CONFIGS[name])
    mine, theirs = _shapes(ours), _shapes(ref)
    assert sorted(set(theirs) - set(mine)) == [] and sorted(set(mine) - set(theirs)) == []
    assert {k: v for k, v in mine.items() if theirs[k] != v} == {}
    count = sum(p.numel() for p in ours.parameters())
    assert abs(count / 1e9 - BILLIONS[name]) < 0.1, count


def test_released_config_round_trips_through_a_diffusers_config(tmp_path):
    """The config.json Diffusers writes for the lite decoder is read back as the same architecture."""
    with torch.device("meta"):
        ref = diffusers.StableCascadeUNet(**CONFIGS["decoder_lite"])
    ref.save_config(tmp_path)
    config = StableCascadeUNet.load_config(tmp_path)
    with torch.device("meta"):
        ours = StableCascadeUNet.from_config(config)
    assert _shapes(ours) == _shapes(ref)
