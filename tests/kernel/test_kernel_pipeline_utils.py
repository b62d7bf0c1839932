"""kernel.pipeline_utils: schedule trimming and input checks every family uses."""

import pytest
import torch

from kernel.pipeline_utils import (
    check_pooled,
    check_prompts,
    check_size,
    check_strength,
    effective_batch,
    repeat_to_batch,
    retrieve_timesteps,
    strength_timesteps,
)
from kernel.pipeline_utils import strength_timesteps as _strength_timesteps

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("strength,steps", [(0.6, 10), (1.0, 4), (0.05, 10)])
def test_strength_timesteps_match_diffusers_img2img(strength, steps):
    ours, theirs = (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0) for _ in range(2))
    retrieve_timesteps(ours, steps)
    got, n = _strength_timesteps(ours, steps, strength, floor_kept=False)
    theirs.set_timesteps(steps)
    start = int(max(steps - min(steps * strength, steps), 0))
    assert n == steps - start
    torch.testing.assert_close(got, theirs.timesteps[start:])
    assert ours.begin_index == start


def test_checks_name_the_argument():
    e = torch.zeros(2, 5, 8)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        check_pooled(e, None)
    with pytest.raises(ValueError, match="does not match"):
        check_pooled(e, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="pooled_projection_dim"):
        check_pooled(e, torch.zeros(2, 4), pooled_dim=6)
    with pytest.raises(ValueError, match="either prompt_2 or prompt_embeds"):
        check_prompts({"prompt": None, "prompt_2": "x"}, e)
    with pytest.raises(ValueError, match="same shape"):
        check_prompts({"prompt": None}, e, {}, torch.zeros(2, 6, 8))
    with pytest.raises(ValueError, match="width must be a positive multiple of 16"):
        check_size(32, 40, 16, "test")
    with pytest.raises(ValueError, match="strength"):
        check_strength(-0.1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        retrieve_timesteps(diffusers.FlowMatchEulerDiscreteScheduler(), 0)
    assert effective_batch(["a", "b"], None, 3) == 6 and effective_batch(None, e, 2) == 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_images_per_prompt must be a positive int"):
            effective_batch("a", None, bad)
    assert repeat_to_batch(torch.ones(2, 3), 4, "x").shape == (4, 3)
    with pytest.raises(ValueError, match="cannot spread 2 images"):
        repeat_to_batch(torch.ones(2, 3), 3, "images")
