"""SparseControlNetModel against Diffusers' with the same weights; from_unet; folders both ways; bad input; and the
motion modules without a second attention (``temporal_double_self_attention=False``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import diffusers
import kernel
from kernel_animatediff.sparse_controlnet import SparseControlNetModel

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401
from test_sc_pipelines import SPARSE, randomise, sparse_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-5
B, F = 2, 3


def pair(**over):
    torch.manual_seed(0)
    config = {**sparse_config(over.pop("simplified", True)), **over}
    theirs = randomise(diffusers.SparseControlNetModel(**config), 1)
    return theirs, fx.ours_of(theirs)


def inputs(model, batch=B, cond_batch=1, per_frame_text=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size = 8 if cfg.use_simplified_condition_embedding else 16
    cond = torch.rand(cond_batch, cfg.conditioning_channels, F, size, size, generator=g)
    mask = torch.zeros(cond_batch, 1, F, size, size)
    mask[:, :, 0] = 1
    cond[:, :, 1:] = 0
    rows = batch * F if per_frame_text else batch
    return dict(sample=torch.randn(batch, 4, F, 8, 8, generator=g), timestep=torch.tensor(10),
                encoder_hidden_states=torch.randn(rows, 5, 32, generator=g), controlnet_cond=cond,
                conditioning_mask=mask)


def max_diff(a, b) -> float:
    (da, ma), (db, mb) = a, b
    assert len(da) == len(db)
    return max(float((x - y).abs().max()) for x, y in zip([*da, ma], [*db, mb]))


@pytest.mark.parametrize("over, call", [
    ({}, {}),
    ({"simplified": False}, {}),
    ({}, {"conditioning_scale": 0.6, "guess_mode": True}),
    ({"controlnet_conditioning_channel_order": "bgr", "simplified": False}, {}),
    ({"global_pool_conditions": True}, {}),
    ({"concat_conditioning_mask": False}, {}),
    ({"temporal_transformer_layers_per_block": 2, "transformer_layers_per_block": 2}, {}),
], ids=["simplified", "pixel-encoder", "guess-mode", "bgr", "global-pool", "no-mask", "deeper"])
def test_matches_diffusers(over, call):
    theirs, ours = pair(**over)
    args = inputs(ours)
    if not ours.config.concat_conditioning_mask:
        args.pop("conditioning_mask")
    with torch.no_grad():
        a = theirs(**args, **call, return_dict=False)
        b = ours(**args, **call, return_dict=False)
    assert max_diff(a, b) < ATOL
    assert float(b[1].abs().max()) > 1e-2  # the randomised zero convs make real residuals


def test_latents_are_not_read_and_conditions_broadcast():
    _, ours = pair()
    args = inputs(ours)
    with torch.no_grad():
        out = ours(**args, return_dict=False)
        noise = ours(**{**args, "sample": torch.randn_like(args["sample"])}, return_dict=False)
        per_video = ours(**{**args, "controlnet_cond": args["controlnet_cond"].repeat(B, 1, 1, 1, 1),
                            "conditioning_mask": args["conditioning_mask"].repeat(B, 1, 1, 1, 1),
                            "encoder_hidden_states": args["encoder_hidden_states"][::F]}, return_dict=False)
        args["encoder_hidden_states"] = args["encoder_hidden_states"][::F].repeat_interleave(F, dim=0)
        same_text = ours(**args, return_dict=False)
    assert max_diff(out, noise) == 0.0
    assert max_diff(same_text, per_video) < ATOL  # one text row per video = that row for each frame
    assert len(out[0]) == 4 and out[0][0].shape == (B * F, 8, 8, 8) and out[1].shape == (B * F, 16, 4, 4)


def test_motion_modules_have_one_attention():
    theirs, ours = pair()
    keys = set(ours.state_dict())
    assert keys == set(theirs.state_dict())
    motion = [k for k in keys if "motion_modules" in k]
    assert motion and not [k for k in motion if ".attn2." in k]
    assert [k for k in motion if ".attn1." in k]
    # the motion UNet's own modules keep their second self-attention
    unet = kernel.component("UNetMotionModel")(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=2,
                                               cross_attention_dim=32, num_attention_heads=2,
                                               motion_num_attention_heads=2,
                                               down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
                                               up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"))
    assert [k for k in unet.state_dict() if "motion_modules" in k and ".attn2." in k]


def test_from_unet_matches_diffusers():
    theirs_unet, ours_unet = fx.pair("UNet2DConditionModel", 0, **fx.UNET)
    theirs_unet.register_to_config(down_block_types=list(theirs_unet.config.down_block_types))  # Diffusers edits it
    theirs = diffusers.SparseControlNetModel.from_unet(theirs_unet, conditioning_embedding_out_channels=(4, 8))
    ours = SparseControlNetModel.from_unet(ours_unet, conditioning_embedding_out_channels=(4, 8))
    skip = ("_", "num_attention_heads")  # Diffusers stores the resolved heads; both build the same modules
    mine = {k: v for k, v in ours.config.items() if not k.startswith(skip)}
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in mine.items()} == \
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in theirs.config.items() if k in mine}
    a, b = theirs.state_dict(), ours.state_dict()
    assert set(a) == set(b)
    copied = [k for k in b if k.startswith(("conv_in", "time_embedding", "down_blocks", "mid_block"))
              and "motion_modules" not in k]
    assert copied and all(torch.equal(a[k], b[k]) for k in copied)
    assert torch.equal(b["conv_in.weight"], ours_unet.state_dict()["conv_in.weight"])
    with pytest.raises(TypeError, match="from_unet takes a UNet2DConditionModel"):
        SparseControlNetModel.from_unet(torch.nn.Linear(2, 2))


def test_folders_both_ways(tmp_path):
    theirs, ours = pair()
    args = inputs(ours)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.component("SparseControlNetModel").from_pretrained(tmp_path / "theirs").eval()
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.SparseControlNetModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        ref = theirs(**args, return_dict=False)
        assert max_diff(loaded(**args, return_dict=False), ref) < ATOL
        assert max_diff(back(**args, return_dict=False), ref) < ATOL
    assert ours(**args).mid_block_res_sample.shape == ref[1].shape


@pytest.mark.parametrize("change, match", [
    (lambda a: {**a, "sample": a["sample"][:, :, 0]}, r"sample must be \(batch, channels, frames"),
    (lambda a: {**a, "controlnet_cond": a["controlnet_cond"][:, :, :2]}, "controlnet_cond must be"),
    (lambda a: {**a, "controlnet_cond": a["controlnet_cond"].repeat(3, 1, 1, 1, 1)}, "3 videos for a batch of 2"),
    (lambda a: {**a, "conditioning_mask": None}, "conditioning_mask is required"),
    (lambda a: {**a, "controlnet_cond": a["controlnet_cond"][..., :4, :4],
                "conditioning_mask": a["conditioning_mask"][..., :4, :4]}, "embedded controlnet_cond"),
    (lambda a: {**a, "encoder_hidden_states": a["encoder_hidden_states"][:5]}, "encoder_hidden_states has 5 rows"),
], ids=["4d-sample", "frames", "cond-batch", "mask", "cond-size", "text-rows"])
def test_bad_input(change, match):
    _, ours = pair()
    with pytest.raises(ValueError, match=match), torch.no_grad():
        ours(**change(inputs(ours)))


@pytest.mark.parametrize("over, match", [
    ({"down_block_types": ("CrossAttnDownBlock2D", "DownBlockMotion")}, "down_block_types"),
    ({"block_out_channels": (8,)}, "block_out_channels has 1 entries"),
    ({"controlnet_conditioning_channel_order": "rbg"}, "controlnet_conditioning_channel_order"),
    ({"motion_num_attention_heads": (2, 2, 2)}, "motion_num_attention_heads has 3 entries"),
], ids=["block-type", "widths", "channel-order", "motion-heads"])
def test_bad_config(over, match):
    with pytest.raises(ValueError, match=match):
        SparseControlNetModel(**{**SPARSE, **over})
