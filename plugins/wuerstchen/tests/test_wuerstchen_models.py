"""WuerstchenPrior and WuerstchenDiffNeXt against Diffusers 0.42.1: same config keys, state-dict layout and numbers;
folders both ways; bad configs and inputs."""

from __future__ import annotations

import json

import pytest
import torch

import kernel
from kernel_wuerstchen import WuerstchenDiffNeXt, WuerstchenPrior
from wuerstchen_fixtures import (DECODER, DECODER_LEVELS, PRIOR, diffusers_wuerstchen, ours_of, randomize, ref_decoder,
                                 ref_prior)

TOL = 1e-5


def _close(got, expected, tol=TOL):
    """Within ``tol`` of Diffusers, relative to the output's scale where that exceeds 1 (the decoder divides by
    a sigmoid that can be small, so fp32 rounding grows with the output)."""
    scale = max(1.0, expected.abs().max().item())
    return (got - expected).abs().max().item() <= tol * scale


def _prior_inputs(batch=2, seed=0, size=5):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, PRIOR["c_in"], size, size + 1, generator=g), r=torch.rand(batch, generator=g),
                c=torch.randn(batch, 7, PRIOR["c_cond"], generator=g))


def _decoder_inputs(config, batch=2, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, config.get("c_in", 4), size, size, generator=g), r=torch.rand(batch, generator=g),
                effnet=torch.randn(batch, config.get("effnet_embd", 16), 3, 3, generator=g),
                clip=torch.randn(batch, 5, config["clip_embd"], generator=g))


def test_registered_names_resolve_to_our_classes():
    assert kernel.component("WuerstchenPrior") is WuerstchenPrior
    assert kernel.component("WuerstchenDiffNeXt") is WuerstchenDiffNeXt


@pytest.mark.parametrize("overrides", [{}, {"c_r": 9}], ids=["test-config", "odd-c_r"])
def test_prior_matches_diffusers(overrides):
    ref = ref_prior(**overrides)
    ours = ours_of(ref)
    inputs = _prior_inputs()
    with torch.no_grad():
        expected, got = ref(**inputs), ours(**inputs)
    assert got.shape == expected.shape == inputs["x"].shape
    assert (got - expected).abs().max().item() < TOL


@pytest.mark.parametrize("config", [DECODER, DECODER_LEVELS], ids=["diffusers-test-config", "two-levels-effnet"])
def test_decoder_matches_diffusers(config):
    ref = ref_decoder(config)
    ours = ours_of(ref)
    inputs = _decoder_inputs(config)
    with torch.no_grad():
        expected, got = ref(**inputs), ours(**inputs)
        (a_ref, b_ref), (a, b) = ref(**inputs, return_noise=False), ours(**inputs, return_noise=False)
    assert got.shape == expected.shape == inputs["x"].shape
    assert _close(got, expected)
    assert _close(a, a_ref) and _close(b, b_ref)


def test_decoder_x_cat_and_eps_match_diffusers():
    config = {**DECODER_LEVELS, "c_in": 6, "c_out": 6}
    ref = ref_decoder(config)
    ours = ours_of(ref)
    inputs = _decoder_inputs(DECODER_LEVELS)
    inputs["x_cat"] = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, got = ref(**inputs, eps=0.05), ours(**inputs, eps=0.05)
    assert got.shape == (2, 6, 16, 16)
    assert (got - expected).abs().max().item() < TOL


def test_decoder_default_init_matches_diffusers_statistics():
    # The training initialisation: zero head and timestep mappers, small conditioning mappers.
    ours = WuerstchenDiffNeXt(**DECODER_LEVELS)
    assert torch.count_nonzero(ours.clf[1].weight) == 0
    assert all(torch.count_nonzero(b.mapper.weight) == 0 for lvl in ours.down_blocks for b in lvl
               if type(b).__name__ == "SDCascadeTimestepBlock")
    assert ours.clip_mapper.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert ours.effnet_mappers[0] is None and ours.effnet_mappers[1] is not None
    ref = diffusers_wuerstchen().WuerstchenDiffNeXt(**DECODER_LEVELS)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())


def test_gradient_checkpointing_gives_the_same_gradients():
    ref = ref_decoder(DECODER_LEVELS)
    plain, checkpointed = ours_of(ref).train(), ours_of(ref).train()
    checkpointed.enable_gradient_checkpointing()
    for model in (plain, checkpointed):
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model(**_decoder_inputs(DECODER_LEVELS)).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


@pytest.mark.parametrize("which", ["prior", "decoder"])
def test_folders_both_ways(tmp_path, which):
    ref = ref_prior() if which == "prior" else ref_decoder(DECODER_LEVELS)
    ours = ours_of(ref)
    inputs = _prior_inputs() if which == "prior" else _decoder_inputs(DECODER_LEVELS)
    # Diffusers' folder -> ours
    ref.save_pretrained(tmp_path / "theirs")
    loaded = type(ours).from_pretrained(tmp_path / "theirs").eval()
    # ours -> Diffusers (through the diffusers.pipelines.(deprecated.)wuerstchen class)
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["_class_name"] == type(ref).__name__
    theirs = type(ref).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        expected = ref(**inputs)
        assert (loaded(**inputs) - expected).abs().max().item() < TOL
        assert (theirs(**inputs) - expected).abs().max().item() < TOL
    written = {k: v for k, v in config.items() if not k.startswith("_")}
    theirs_written = json.loads((tmp_path / "theirs" / "config.json").read_text())
    assert written == {k: v for k, v in theirs_written.items() if not k.startswith("_")}


@pytest.mark.parametrize("bad, match", [
    (dict(c=10, nhead=4), "divisible by nhead"),
    (dict(depth=0), "depth must be a positive int"),
    (dict(c_in=2.5), "c_in must be a positive int"),
])
def test_prior_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        WuerstchenPrior(**{**PRIOR, **bad})


@pytest.mark.parametrize("bad, match", [
    (dict(blocks=[1]), "blocks must have one entry per level"),
    (dict(level_config=["CT", "CTX"]), r"level_config\[1\]='CTX'"),
    (dict(inject_effnet=[True]), "inject_effnet must have one entry per level"),
])
def test_decoder_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        WuerstchenDiffNeXt(**{**DECODER_LEVELS, **bad})


def test_bad_inputs_name_the_argument():
    prior = WuerstchenPrior(**PRIOR).eval()
    inputs = _prior_inputs()
    with pytest.raises(ValueError, match="x must be a"):
        prior(**{**inputs, "x": torch.randn(2, 3, 4, 4)})
    with pytest.raises(ValueError, match="c must be a"):
        prior(**{**inputs, "c": torch.randn(2, 7, 31)})
    decoder = WuerstchenDiffNeXt(**DECODER_LEVELS).eval()
    inputs = _decoder_inputs(DECODER_LEVELS)
    with pytest.raises(ValueError, match="effnet must be a"):
        decoder(**{**inputs, "effnet": torch.randn(2, 8, 3, 3)})
    with pytest.raises(ValueError, match="x .with x_cat. must be a"):
        decoder(**{**inputs, "x": torch.randn(2, 3, 16, 16)})
