"""Guiders: the contract suite on every guider, their arithmetic against Diffusers' guiders, bad input."""

import pytest
import torch

from kernel.guidance import GuidanceStep
from kernel_contracts import GuiderContract
from kernel_guiders import (AdaptiveProjectedGuidance, ClassifierFreeGuidance, PerturbedAttentionGuidance,
                            SkipLayerGuidance, TrueClassifierFreeGuidance)

diffusers = pytest.importorskip("diffusers")


class TestClassifierFreeGuidance(GuiderContract):
    component = "ClassifierFreeGuidance"


class TestTrueClassifierFreeGuidance(GuiderContract):
    component = "TrueClassifierFreeGuidance"


class TestAdaptiveProjectedGuidance(GuiderContract):
    component = "AdaptiveProjectedGuidance"
    contract_options = {"config": {"adaptive_projected_guidance_momentum": -0.5}}


class TestPerturbedAttentionGuidance(GuiderContract):
    component = "PerturbedAttentionGuidance"
    contract_options = {"config": {"perturbed_guidance_adaptive_scale": 0.001}}


class TestSkipLayerGuidance(GuiderContract):
    component = "SkipLayerGuidance"
    contract_options = {"config": {"skip_layer_guidance_layers": [1], "skip_layer_guidance_start": 0.0,
                                   "skip_layer_guidance_stop": 1.0}}


def _preds(seed, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _run(ours, theirs, steps=6):
    ours.reset()
    for i in range(steps):
        cond, uncond = _preds(i)
        step = GuidanceStep(i, steps, torch.tensor(999.0 - 100 * i))
        theirs.set_state(step=i, num_inference_steps=steps, timestep=step.timestep)
        names = [p.name for p in ours.passes(step)]
        got = ours.combine({"pred_cond": cond, "pred_uncond": uncond} if "pred_uncond" in names
                           else {"pred_cond": cond}, step)
        expected = theirs.forward(cond, uncond).pred
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(guidance_scale=7.5),
    dict(guidance_scale=4.0, guidance_rescale=0.7),
    dict(guidance_scale=3.0, use_original_formulation=True),
    dict(guidance_scale=5.0, start=0.2, stop=0.7),
])
def test_cfg_matches_diffusers_guider(kwargs):
    _run(ClassifierFreeGuidance(**kwargs), diffusers.ClassifierFreeGuidance(**kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(guidance_scale=7.5),
    dict(guidance_scale=6.0, adaptive_projected_guidance_momentum=-0.5, adaptive_projected_guidance_rescale=5.0),
    dict(guidance_scale=4.0, eta=0.0, guidance_rescale=0.5),
    dict(guidance_scale=4.0, adaptive_projected_guidance_rescale=0.0, use_original_formulation=True),
])
def test_apg_matches_diffusers_guider(kwargs):
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

    theirs = diffusers.AdaptiveProjectedGuidance(**kwargs)
    momentum = kwargs.get("adaptive_projected_guidance_momentum")
    theirs.momentum_buffer = MomentumBuffer(momentum) if momentum is not None else None
    _run(AdaptiveProjectedGuidance(**kwargs), theirs)


def test_true_cfg_runs_passes_apart_and_matches_cfg():
    cfg, true_cfg = ClassifierFreeGuidance(guidance_scale=3.0), TrueClassifierFreeGuidance(guidance_scale=3.0)
    assert cfg.batched and not true_cfg.batched
    step = GuidanceStep(0, 1, torch.tensor(1.0))
    cond, uncond = _preds(0)
    preds = {"pred_cond": cond, "pred_uncond": uncond}
    assert torch.equal(cfg.combine(preds, step), true_cfg.combine(preds, step))


def test_pag_arithmetic_is_the_pipelines():
    """``uncond + s (cond - uncond) + pag (cond - perturbed)``, adaptive scale clamped at 0."""
    g = PerturbedAttentionGuidance(guidance_scale=5.0, perturbed_guidance_scale=3.0,
                                   perturbed_guidance_adaptive_scale=0.01)
    cond, uncond = _preds(1)
    perturbed = _preds(2)[0]
    for t, pag in ((999.0, 3.0 - 0.01), (500.0, 0.0)):
        step = GuidanceStep(0, 4, torch.tensor(t))
        assert [p.name for p in g.passes(step)] == ["pred_uncond", "pred_cond", "pred_cond_perturbed"]
        got = g.combine({"pred_cond": cond, "pred_uncond": uncond, "pred_cond_perturbed": perturbed}, step)
        expected = uncond + 5.0 * (cond - uncond) + pag * (cond - perturbed)
        torch.testing.assert_close(got, expected)


def test_skip_layer_window_is_the_sd3_pipelines():
    g = SkipLayerGuidance(guidance_scale=5.0, skip_layer_guidance_layers=[7, 8], skip_layer_guidance_start=0.01,
                          skip_layer_guidance_stop=0.5)
    active = [i for i in range(9) if "pred_cond_skip" in [p.name for p in g.passes(GuidanceStep(i, 9, 0))]]
    assert active == [1, 2, 3, 4]  # 9 * 0.01 < i < 9 * 0.5
    skip = [p for p in g.passes(GuidanceStep(2, 9, 0)) if p.name == "pred_cond_skip"][0]
    assert dict(skip.options) == {"skip_layers": [7, 8]}


@pytest.mark.parametrize("build,match", [
    (lambda: ClassifierFreeGuidance(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (lambda: ClassifierFreeGuidance(guidance_rescale=-1), "guidance_rescale must be >= 0"),
    (lambda: ClassifierFreeGuidance(start=0.8, stop=0.2), "start .* must not be after stop"),
    (lambda: ClassifierFreeGuidance(stop=1.5), "must be a fraction"),
    (lambda: PerturbedAttentionGuidance(perturbed_guidance_scale=-1), "pag_scale must be >= 0"),
    (lambda: PerturbedAttentionGuidance(perturbed_guidance_layers=[]), "pag_applied_layers"),
    (lambda: SkipLayerGuidance(), "skip_layer_guidance_layers"),
    (lambda: AdaptiveProjectedGuidance(eta=float("inf")), "eta must be a finite number"),
])
def test_bad_arguments_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_saved_config_round_trips(tmp_path):
    g = PerturbedAttentionGuidance(guidance_scale=4.0, perturbed_guidance_layers=["mid", "up"])
    g.save_config(tmp_path)
    again = PerturbedAttentionGuidance.from_pretrained(tmp_path)
    assert again.layers == ["mid", "up"] and again.guidance_scale == 4.0
