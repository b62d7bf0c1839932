"""The engine through the SD family: the step-end callback rule, guiders as components, conditioning hooks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel.engine import Conditioning, Evaluation

sys.path.insert(0, str(Path(__file__).parent))
import sd_fixtures as fx  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")
CALL = dict(prompt="a photo of a cat", num_inference_steps=5, output_type="np")


def _pair(xl: bool = False):
    theirs_parts, ours_parts = fx.xl_components() if xl else fx.sd_components()
    name = "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"
    theirs, ours = getattr(diffusers, name)(**theirs_parts), kernel.component(name)(**ours_parts)
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _images(pipe, **kwargs):
    return pipe(generator=fx.gen(0), height=32, width=32, **{**CALL, **kwargs}).images


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
def test_diffusers_cfg_cutoff_callbacks_work_unchanged(xl):
    """Diffusers' official callbacks halve the [negative; positive] tensors; guidance then stops."""
    from diffusers.callbacks import SDCFGCutoffCallback, SDXLCFGCutoffCallback

    theirs, ours = _pair(xl)
    cls = SDXLCFGCutoffCallback if xl else SDCFGCutoffCallback
    fx.assert_images_close(_images(ours, callback_on_step_end=cls(cutoff_step_ratio=0.4)),
                           _images(theirs, callback_on_step_end=cls(cutoff_step_ratio=0.4)), atol=1e-4)


def test_cfg_window_is_the_cutoff_callback_as_a_setting():
    from diffusers.callbacks import SDCFGCutoffCallback

    theirs, ours = _pair()
    # the callback switches CFG off after step int(5 * 0.4) = 2, i.e. steps 0-2 are guided: stop = 3/5
    ours.guider = kernel.component("ClassifierFreeGuidance")(guidance_scale=7.5, stop=0.6)
    fx.assert_images_close(_images(ours), _images(theirs, callback_on_step_end=SDCFGCutoffCallback(
        cutoff_step_ratio=0.4)), atol=1e-4)


def test_callback_sees_stacked_prompt_tensors_and_may_replace_them():
    _, ours = _pair()
    seen = {}

    def callback(pipe, i, t, tensors):
        seen[i] = {k: None if v is None else tuple(v.shape) for k, v in tensors.items()}
        if i == 1:  # replace both halves with the same values: nothing changes
            return {"prompt_embeds": tensors["prompt_embeds"].clone()}
        return {}

    names = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    baseline = _images(ours)
    out = _images(ours, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=names)
    assert torch.equal(torch.as_tensor(baseline), torch.as_tensor(out))
    assert seen[0] == {"latents": (1, 4, 16, 16), "prompt_embeds": (2, 77, 32), "negative_prompt_embeds": (1, 77, 32)}
    nocfg = {}
    _images(ours, guidance_scale=1.0, callback_on_step_end=lambda p, i, t, k: nocfg.update(
        {k2: None if v is None else tuple(v.shape) for k2, v in k.items()}), callback_on_step_end_tensor_inputs=names)
    assert nocfg == {"latents": (1, 4, 16, 16), "prompt_embeds": (1, 77, 32), "negative_prompt_embeds": None}


def test_callback_errors_name_the_problem():
    _, ours = _pair()
    with pytest.raises(ValueError, match="returned 'noise_pred'"):
        _images(ours, callback_on_step_end=lambda p, i, t, k: {"noise_pred": k["latents"]})
    with pytest.raises(ValueError, match="prompt_embeds with 3 rows; expected 1"):
        _images(ours, callback_on_step_end=lambda p, i, t, k: {"prompt_embeds": torch.zeros(3, 77, 32)},
                callback_on_step_end_tensor_inputs=["prompt_embeds"])
    with pytest.raises(TypeError, match="must return a dict"):
        _images(ours, callback_on_step_end=lambda p, i, t, k: ["latents"])


def test_a_pag_guider_on_the_plain_pipeline_is_the_pag_pipeline():
    _, parts = fx.sd_components()
    plain = kernel.component("StableDiffusionPipeline")(**parts)
    pag = kernel.component("StableDiffusionPAGPipeline")(**parts, pag_applied_layers=["mid", "up"])
    for p in (plain, pag):
        p.set_progress_bar_config(disable=True)
    plain.guider = kernel.component("PerturbedAttentionGuidance")(
        guidance_scale=7.5, perturbed_guidance_scale=2.0, perturbed_guidance_layers=["mid", "up"])
    assert torch.equal(torch.as_tensor(_images(plain)), torch.as_tensor(_images(pag, pag_scale=2.0)))
    plain.guider = None
    assert not torch.equal(torch.as_tensor(_images(plain)), torch.as_tensor(_images(pag, pag_scale=2.0)))


def test_apg_guider_runs_in_sd_and_differs_from_cfg():
    _, ours = _pair()
    cfg = _images(ours)
    ours.guider = kernel.component("AdaptiveProjectedGuidance")(guidance_scale=7.5, adaptive_projected_guidance_rescale=0.5)
    apg = _images(ours)
    assert apg.shape == cfg.shape and abs(apg - cfg).max() > 1e-3


class _Recorder:
    """A conditioning hook that records every evaluation and (with ``scale``) changes the text conditioning."""

    def __init__(self, scale: float = 1.0):
        self.calls, self.scale = [], scale

    def __call__(self, pipe, evaluation: Evaluation) -> None:
        self.calls.append((evaluation.step.index, tuple(evaluation.model_input.shape),
                           tuple(p.name for p in evaluation.passes)))
        if self.scale != 1.0:
            evaluation.cond["prompt_embeds"] = evaluation.cond["prompt_embeds"] * self.scale


def test_conditioning_hooks_see_every_evaluation_and_can_change_it():
    _, ours = _pair()
    base = _images(ours, num_inference_steps=3)
    hook = _Recorder()
    ours.conditioning_hooks.append(hook)
    assert torch.equal(torch.as_tensor(_images(ours, num_inference_steps=3)), torch.as_tensor(base))
    assert hook.calls == [(i, (2, 4, 16, 16), ("pred_uncond", "pred_cond")) for i in range(3)]
    ours.conditioning_hooks[:] = [_Recorder(scale=0.5)]
    assert not torch.equal(torch.as_tensor(_images(ours, num_inference_steps=3)), torch.as_tensor(base))
    ours.conditioning_hooks.clear()


def test_conditioning_holds_positive_negative_and_shared():
    cond = Conditioning({"prompt_embeds": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="negative conditioning"):
        cond.side("negative")
    assert cond.side("positive") is cond.positive
