"""The simple cross-attention stages (unCLIP / Kandinsky 2.2 UNets) against Diffusers: same weights, same outputs."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from kernel_unet import UNet2DConditionModel  # noqa: E402
from kernel_unet.simple_blocks import AttnAddedKVProcessor  # noqa: E402

KANDINSKY = dict(in_channels=4, out_channels=8, addition_embed_type="image",
                 down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                 up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                 mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
                 encoder_hid_dim=32, encoder_hid_dim_type="image_proj", cross_attention_dim=40, attention_head_dim=4,
                 resnet_time_scale_shift="scale_shift")
CONFIGS = {
    "kandinsky22": KANDINSKY,
    "only_cross_two_layers": {**KANDINSKY, "only_cross_attention": True, "layers_per_block": 2},
    "text_tokens_skip_time_act": dict(block_out_channels=(32, 64), layers_per_block=1, in_channels=3, out_channels=6,
                                      down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                                      up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                                      mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32,
                                      attention_head_dim=8, resnet_skip_time_act=True, resnet_out_scale_factor=1.4142,
                                      cross_attention_norm="group_norm", norm_num_groups=8),
}


def _pair(name: str):
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**CONFIGS[name]).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():  # zero-initialised output layers would hide mistakes
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ours = UNet2DConditionModel(**CONFIGS[name]).eval()
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return ref, ours


def _inputs(name: str):
    g = torch.Generator().manual_seed(2)
    cfg = CONFIGS[name]
    x = torch.randn(2, cfg["in_channels"], 16, 16, generator=g)
    if cfg.get("encoder_hid_dim_type") == "image_proj":
        return x, None, {"image_embeds": torch.randn(2, 32, generator=g)}
    return x, torch.randn(2, 5, cfg["cross_attention_dim"], generator=g), None


@torch.no_grad()
@pytest.mark.parametrize("name", list(CONFIGS))
def test_simple_cross_attention_unet_matches_diffusers(name):
    ref, ours = _pair(name)
    x, text, added = _inputs(name)
    a = ref(x, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample
    b = ours(x, torch.tensor(10), encoder_hidden_states=text, added_cond_kwargs=added).sample
    assert b.shape == a.shape
    assert (a - b).abs().max().item() < 1e-4


@torch.no_grad()
def test_cross_attention_mask_on_added_tokens_matches_diffusers():
    ref, ours = _pair("text_tokens_skip_time_act")
    x, text, _ = _inputs("text_tokens_skip_time_act")
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    a = ref(x, 10, encoder_hidden_states=text, encoder_attention_mask=keep).sample
    b = ours(x, 10, encoder_hidden_states=text, encoder_attention_mask=keep).sample
    assert (a - b).abs().max().item() < 1e-4
    # The mask matters: dropping tokens changes the output.
    assert (b - ours(x, 10, encoder_hidden_states=text).sample).abs().max().item() > 1e-5


@torch.no_grad()
def test_model_wide_attention_switches_keep_the_added_kv_computation():
    _, ours = _pair("kandinsky22")
    x, _, added = _inputs("kandinsky22")
    before = ours(x, 10, None, added_cond_kwargs=added).sample
    for switch in (lambda m: m.set_attention_backend("math"), lambda m: m.set_attention_slice("max"),
                   lambda m: m.set_default_attn_processor()):
        switch(ours)
        assert all(isinstance(p, AttnAddedKVProcessor) for p in ours.attn_processors.values())
        assert (ours(x, 10, None, added_cond_kwargs=added).sample - before).abs().max().item() < 1e-5


def test_simple_block_needs_cross_attention_dim():
    with pytest.raises(ValueError, match="cross_attention_dim"):
        UNet2DConditionModel(**{**CONFIGS["text_tokens_skip_time_act"], "cross_attention_dim": None,
                                "cross_attention_norm": None})
