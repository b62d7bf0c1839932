"""ControlNetModel and MultiControlNetModel against Diffusers' (same weights, 1e-4), folders both ways,
``from_unet``, the control keep rule, and bad configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cn_fixtures as cf  # noqa: E402
from cn_fixtures import fx, single_thread  # noqa: E402,F401

from kernel.guidance import GuidanceStep  # noqa: E402
from kernel_controlnet import ControlNetModel, MultiControlNetModel, control_keep  # noqa: E402

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(xl: bool, batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = dict(sample=torch.randn(batch, 4, 16, 16, generator=g), timestep=torch.tensor(321),
                  encoder_hidden_states=torch.randn(batch, 7, 64 if xl else 32, generator=g),
                  controlnet_cond=torch.rand(batch, 3, 32, 32, generator=g))
    if xl:
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 32, generator=g),
                                       "time_ids": torch.randn(batch, 6, generator=g) * 100}
    return inputs


def _assert_residuals_close(a, b, atol=1e-4):
    assert len(a[0]) == len(b[0])
    for x, y in zip(a[0], b[0]):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=atol, rtol=0)


VARIANTS = {
    "sd": (False, {}),
    "sdxl": (True, {}),
    "bgr-pooled": (False, dict(controlnet_conditioning_channel_order="bgr", global_pool_conditions=True)),
    "mid-resnet-heads": (False, dict(mid_block_type="UNetMidBlock2D", num_attention_heads=(2, 4),
                                     conditioning_channels=1, conditioning_embedding_out_channels=(8, 8, 16))),
}


@torch.no_grad()
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("call", [dict(), dict(conditioning_scale=0.6, guess_mode=True)], ids=["plain", "guess"])
def test_forward_matches_diffusers(variant, call):
    xl, over = VARIANTS[variant]
    theirs, ours = cf.controlnet(xl=xl, **over)
    inputs = _inputs(xl)
    if over.get("conditioning_channels") == 1:
        inputs["controlnet_cond"] = torch.rand(2, 1, 64, 64)
    a = theirs(**inputs, **call, return_dict=False)
    b = ours(**inputs, **call, return_dict=False)
    _assert_residuals_close(a, b)
    assert max(r.abs().max() for r in b[0]) > 0  # randomised output convs: a real signal
    out = ours(**inputs, **call)
    assert out.mid_block_res_sample.shape == b[1].shape and len(out.down_block_res_samples) == len(b[0])


@torch.no_grad()
def test_from_unet_copies_what_diffusers_copies():
    theirs_unet, ours_unet = fx.unet(xl=True)
    theirs = diffusers.ControlNetModel.from_unet(theirs_unet, conditioning_embedding_out_channels=(4, 8))
    ours = ControlNetModel.from_unet(ours_unet, conditioning_embedding_out_channels=(4, 8))
    a, b = theirs.state_dict(), ours.state_dict()
    assert set(a) == set(b)
    copied = [k for k in a if not k.startswith(cf.ZERO_INIT) and not k.startswith("controlnet_cond_embedding")]
    for k in copied:
        assert torch.equal(a[k], b[k]), k
    assert all(not b[k].any() for k in b if k.startswith(cf.ZERO_INIT))  # zero convolutions start at zero
    for k in ("down_block_types", "block_out_channels", "transformer_layers_per_block", "addition_embed_type",
              "projection_class_embeddings_input_dim", "attention_head_dim"):
        assert list(ours.config[k]) == list(theirs.config[k]) if isinstance(ours.config[k], (list, tuple)) \
            else ours.config[k] == theirs.config[k], k
    cf.randomise_zero_convs(ours)
    theirs.load_state_dict(ours.state_dict())
    _assert_residuals_close(theirs(**_inputs(True), return_dict=False), ours(**_inputs(True), return_dict=False))


@torch.no_grad()
def test_folders_load_both_ways(tmp_path):
    theirs, ours = cf.controlnet(xl=True)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = ControlNetModel.from_pretrained(tmp_path / "theirs")
    _assert_residuals_close(theirs(**_inputs(True), return_dict=False), loaded(**_inputs(True), return_dict=False))
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.ControlNetModel.from_pretrained(tmp_path / "ours")
    _assert_residuals_close(back(**_inputs(True), return_dict=False), ours(**_inputs(True), return_dict=False))


@torch.no_grad()
def test_multi_controlnet_matches_diffusers_and_round_trips(tmp_path):
    pairs = [cf.controlnet(seed=s) for s in (1, 2)]
    theirs = diffusers.MultiControlNetModel([p[0] for p in pairs])
    ours = MultiControlNetModel([p[1] for p in pairs])
    inputs = _inputs(False)
    image = inputs.pop("controlnet_cond")
    images = [image, image.flip(-1)]
    call = dict(controlnet_cond=images, conditioning_scale=[0.4, 1.3], guess_mode=True, return_dict=False)
    _assert_residuals_close(theirs(**inputs, **call), ours(**inputs, **call))

    ours.save_pretrained(str(tmp_path / "cn"))
    assert (tmp_path / "cn_1" / "config.json").is_file() and not (tmp_path / "cn_2").exists()
    back = diffusers.MultiControlNetModel.from_pretrained(str(tmp_path / "cn"))
    _assert_residuals_close(back(**inputs, **call), ours(**inputs, **call))
    loaded = MultiControlNetModel.from_pretrained(tmp_path, subfolder="cn")
    assert len(loaded.nets) == 2
    _assert_residuals_close(theirs(**inputs, **call), loaded(**inputs, **call))
    with pytest.raises(ValueError, match="one entry per net"):
        ours(**inputs, controlnet_cond=images[:1], conditioning_scale=[1.0, 1.0])
    with pytest.raises(ValueError, match="no ControlNet folder"):
        MultiControlNetModel.from_pretrained(tmp_path / "missing")


def test_keep_rule_is_diffusers_window():
    def keeps(start, end, n=10):
        return [control_keep(GuidanceStep(i, n, None), start, end) for i in range(n)]

    assert keeps(0.0, 1.0) == [1.0] * 10
    # step i is kept when start <= i/N and (i+1)/N <= end
    assert keeps(0.2, 0.5) == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert keeps(0.25, 0.55, n=4) == [0, 1, 0, 0]


def test_gradient_checkpointing_gives_the_same_gradients():
    model = cf.our_controlnet(xl=True).train()
    inputs = _inputs(True)

    def grads():
        model.zero_grad(set_to_none=True)
        down, mid = model(**inputs, return_dict=False)
        (sum(d.pow(2).mean() for d in down) + mid.pow(2).mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    for n, g in grads().items():
        torch.testing.assert_close(g, plain[n], atol=1e-6, rtol=0)


@pytest.mark.parametrize("over,argument", [
    (dict(block_out_channels=(4, 8, 8)), "block_out_channels"),
    (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type"),
    (dict(controlnet_conditioning_channel_order="gbr"), "controlnet_conditioning_channel_order"),
    (dict(addition_embed_type="text"), "addition_embed_type"),
    (dict(addition_embed_type="text_time"), "addition_time_embed_dim"),
    (dict(only_cross_attention=(True,)), "only_cross_attention"),
    (dict(layers_per_block=(1, 2)), "layers_per_block"),
    (dict(encoder_hid_dim_type="image_proj", encoder_hid_dim=8), "encoder_hid_dim_type"),
])
def test_bad_config_raises_value_error_naming_the_key(over, argument):
    with pytest.raises(ValueError, match=argument):
        ControlNetModel(**{**cf.SD_CN, **over})


def test_bad_forward_inputs():
    model = cf.our_controlnet(xl=True)
    inputs = _inputs(True)
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        model(**{**inputs, "added_cond_kwargs": {"text_embeds": inputs["added_cond_kwargs"]["text_embeds"]}})
    with pytest.raises(ValueError, match="controlnet_cond"):
        model(**{**inputs, "controlnet_cond": inputs["controlnet_cond"][0]})
    with pytest.raises(ValueError, match="controlnets"):
        MultiControlNetModel([])
