"""MotionAdapter and UNetMotionModel against Diffusers: same keys, same outputs, folders both ways, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import diffusers
from kernel_animatediff import MotionAdapter, UNetMotionModel
from kernel_unet import UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(batch=2, frames=3, per_frame=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, 8, 8, generator=g)
    states = torch.randn(batch, 5, 32, generator=g)
    return sample, torch.tensor(321), states.repeat_interleave(frames, 0) if per_frame else states


def _motion_pair(adapter_over=None, unet_over=None):
    du, ku = fx.pair("UNet2DConditionModel", 0, **{**fx.UNET, **(unet_over or {})})
    da, ka = fx.pair("MotionAdapter", 1, **{**fx.ADAPTER, **(adapter_over or {})})
    return (diffusers.UNetMotionModel.from_unet2d(du, da).eval(), UNetMotionModel.from_unet2d(ku, ka).eval(), da, ka)


@pytest.mark.parametrize("adapter_over", [
    {},
    {"use_motion_mid_block": False},
    {"motion_transformer_layers_per_block": 2, "motion_layers_per_block": (1, 1)},
    {"conv_in_channels": 6},
])
def test_from_unet2d_matches_diffusers(adapter_over):
    theirs, ours, _, _ = _motion_pair(adapter_over)
    assert dict(ours.config) == {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    assert set(ours.state_dict()) == set(theirs.state_dict())
    sample, t, states = _inputs()
    if adapter_over.get("conv_in_channels"):
        sample = torch.cat([sample, torch.randn(2, 2, 3, 8, 8)], dim=1)
    with torch.no_grad():
        want = theirs(sample, t, states).sample
        got = ours(sample, t, states).sample
    assert got.shape == (2, 4, 3, 8, 8)
    assert (got - want).abs().max() < 1e-5


def test_direct_config_model_matches_diffusers_and_takes_per_video_states():
    torch.manual_seed(3)
    theirs = diffusers.UNetMotionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=2, cross_attention_dim=32,
        num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=6,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), temporal_transformer_layers_per_block=(1, 2),
        time_cond_proj_dim=4).eval()
    ours = fx.ours_of(theirs)
    sample, t, states = _inputs(frames=5)
    cond = torch.randn(2, 4)
    with torch.no_grad():
        want = theirs(sample, t, states, timestep_cond=cond).sample
        got = ours(sample, t, states, timestep_cond=cond).sample
        per_video = ours(sample, t, states[::5], timestep_cond=cond).sample
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(per_video, got)


def test_freeu_and_controlnet_residuals_match_diffusers():
    theirs, ours, _, _ = _motion_pair()
    sample, t, states = _inputs(batch=1)
    theirs.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    g = torch.Generator().manual_seed(5)
    down = [torch.randn(3, c, s, s, generator=g) for c, s in ((8, 8), (8, 8), (8, 4), (16, 4), (16, 4))]
    mid = torch.randn(3, 16, 4, 4, generator=g)
    with torch.no_grad():
        want = theirs(sample, t, states, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        got = ours(sample, t, states, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert (got - want).abs().max() < 1e-5
    ours.disable_freeu()
    theirs.disable_freeu()
    with torch.no_grad():
        assert (ours(sample, t, states).sample - theirs(sample, t, states).sample).abs().max() < 1e-5


def test_folders_load_both_ways(tmp_path):
    theirs, ours, da, ka = _motion_pair()
    da.save_pretrained(tmp_path / "d_adapter")
    theirs.save_pretrained(tmp_path / "d_unet")
    ka.save_pretrained(tmp_path / "k_adapter")
    ours.save_pretrained(tmp_path / "k_unet")

    adapter = MotionAdapter.from_pretrained(tmp_path / "d_adapter")
    assert all(torch.equal(v, da.state_dict()[k]) for k, v in adapter.state_dict().items())
    adapter_back = diffusers.MotionAdapter.from_pretrained(tmp_path / "k_adapter")
    assert all(torch.equal(v, ka.state_dict()[k]) for k, v in adapter_back.state_dict().items())

    sample, t, states = _inputs(batch=1)
    with torch.no_grad():
        want = theirs(sample, t, states).sample
        loaded = UNetMotionModel.from_pretrained(tmp_path / "d_unet")(sample, t, states).sample
        back = diffusers.UNetMotionModel.from_pretrained(tmp_path / "k_unet").eval()(sample, t, states).sample
    assert (loaded - want).abs().max() < 1e-5 and (back - want).abs().max() < 1e-5


def test_save_and_load_motion_modules(tmp_path):
    _, ours, _, ka = _motion_pair()
    ours.save_motion_modules(tmp_path / "adapter")
    loaded = diffusers.MotionAdapter.from_pretrained(tmp_path / "adapter")
    assert set(loaded.state_dict()) == set(ka.state_dict())
    assert all(torch.equal(v, ka.state_dict()[k]) for k, v in loaded.state_dict().items())

    # a motion UNet without an adapter, then the adapter's modules loaded into it, equals from_unet2d(unet, adapter)
    _, ku = fx.pair("UNet2DConditionModel", 0, **fx.UNET)
    bare = UNetMotionModel.from_unet2d(ku, MotionAdapter(**fx.ADAPTER)).eval()
    bare.load_motion_modules(MotionAdapter.from_pretrained(tmp_path / "adapter"))
    sample, t, states = _inputs(batch=1)
    with torch.no_grad():
        assert torch.equal(bare(sample, t, states).sample, ours(sample, t, states).sample)


def test_freeze_unet2d_params_trains_motion_modules_only():
    _, ours, _, _ = _motion_pair()
    ours.freeze_unet2d_params()
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all("motion_modules" in n for n in trainable)
    assert len(trainable) == len([n for n, _ in ours.named_parameters() if "motion_modules" in n])


def test_adapter_that_does_not_fit_names_both_widths():
    _, ku = fx.pair("UNet2DConditionModel", 0, **fx.UNET)
    wrong = MotionAdapter(**{**fx.ADAPTER, "block_out_channels": (16, 32)})
    with pytest.raises(ValueError, match=r"widths \[16, 32\].*widths \[8, 16\]"):
        UNetMotionModel.from_unet2d(ku, wrong)
    layers = MotionAdapter(**{**fx.ADAPTER, "motion_layers_per_block": 2})
    with pytest.raises(ValueError, match=r"\[2, 2\] motion layers.*\[1, 1\] layers"):
        UNetMotionModel.from_unet2d(ku, layers)
    model = UNetMotionModel.from_unet2d(ku, MotionAdapter(**fx.ADAPTER))
    with pytest.raises(ValueError, match="widths"):
        model.load_motion_modules(wrong)
    longer = MotionAdapter(**{**fx.ADAPTER, "motion_max_seq_length": 16})
    with pytest.raises(ValueError, match="motion_max_seq_length"):
        model.load_motion_modules(longer)
    with pytest.raises(TypeError, match="MotionAdapter"):
        UNetMotionModel.from_unet2d(ku, "adapter")
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        UNetMotionModel.from_unet2d(torch.nn.Linear(2, 2))


def test_bad_forward_inputs():
    _, ours, _, _ = _motion_pair()
    sample, t, states = _inputs(frames=3)
    with pytest.raises(ValueError, match=r"\(batch, channels, frames, height, width\)"):
        ours(sample[:, :, 0], t, states)
    with pytest.raises(ValueError, match="9 frames but the motion modules cover at most motion_max_seq_length=8"):
        ours(torch.randn(1, 4, 9, 8, 8), t, states[:1])
    with pytest.raises(ValueError, match=r"encoder_hidden_states has 4 rows; give one per video \(2\)"):
        ours(sample, t, states[:4])
    with pytest.raises(ValueError, match="added_cond_kwargs must contain"):
        UNetMotionModel(**{**_tiny_config(), "addition_embed_type": "text_time", "addition_time_embed_dim": 4,
                           "projection_class_embeddings_input_dim": 40})(sample, t, states)


def _tiny_config():
    return dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=2, cross_attention_dim=32,
                num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=8,
                down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
                up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"))


@pytest.mark.parametrize("over, match", [
    ({"down_block_types": ("CrossAttnDownBlock2D", "DownBlockMotion")}, "takes .*CrossAttnDownBlockMotion"),
    ({"up_block_types": ("UpBlockMotion",)}, "differ in length"),
    ({"block_out_channels": (8,)}, "block_out_channels has 1 entries"),
    ({"motion_max_seq_length": 0}, "motion_max_seq_length must be a positive int"),
    ({"motion_num_attention_heads": 3}, "cannot be split into 3 motion attention heads"),
    ({"encoder_hid_dim_type": "text_proj"}, "encoder_hid_dim_type"),
])
def test_bad_configs(over, match):
    with pytest.raises(ValueError, match=match):
        UNetMotionModel(**{**_tiny_config(), **over})


def test_bad_adapter_configs_and_running_an_adapter():
    with pytest.raises(ValueError, match="motion_layers_per_block has 3 entries for 2 blocks"):
        MotionAdapter(**{**fx.ADAPTER, "motion_layers_per_block": (1, 1, 1)})
    with pytest.raises(ValueError, match="motion_max_seq_length must be a positive int"):
        MotionAdapter(**{**fx.ADAPTER, "motion_max_seq_length": -1})
    with pytest.raises(TypeError, match="holds weights only"):
        MotionAdapter(**fx.ADAPTER)(torch.zeros(1))


def test_unet2d_passed_to_from_unet2d_keeps_its_own_weights():
    du, ku = fx.pair("UNet2DConditionModel", 0, **fx.UNET)
    model = UNetMotionModel.from_unet2d(ku)
    for key, value in ku.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert isinstance(ku, UNet2DConditionModel)
