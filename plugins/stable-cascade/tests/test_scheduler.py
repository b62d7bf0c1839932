"""DDPMWuerstchenScheduler against Diffusers' (same steps, same seeded noise)."""

from __future__ import annotations

import pytest
import torch

from kernel_stable_cascade.scheduler import DDPMWuerstchenScheduler

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("scaler", [1.0, 2.0, 0.5])
def test_loop_matches_diffusers(scaler):
    ours, ref = DDPMWuerstchenScheduler(scaler=scaler), diffusers.DDPMWuerstchenScheduler(scaler=scaler)
    ours.set_timesteps(5)
    ref.set_timesteps(5)
    assert torch.equal(ours.timesteps, ref.timesteps)
    x = y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps[:-1]:
        out = torch.sin(x * 3 + t)  # a model stand-in
        ratio = t.expand(2)
        x = ours.step(out, ratio, x, generator=torch.Generator().manual_seed(int(t * 100))).prev_sample
        y = ref.step(out, ratio, y, generator=torch.Generator().manual_seed(int(t * 100))).prev_sample
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-5)  # values grow to ~1e2 with this stand-in
    noise, t = torch.randn(2, 3, 4, 4), torch.tensor([0.3, 0.9])
    assert torch.allclose(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t), atol=1e-6)


def test_custom_timesteps_and_last_step_is_noise_free():
    ours = DDPMWuerstchenScheduler()
    ours.set_timesteps(timesteps=[1.0, 0.5, 0.0])
    assert len(ours) == 2
    x = torch.randn(1, 2, 2, 2)
    a = ours.step(torch.zeros_like(x), torch.tensor([0.5]), x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = ours.step(torch.zeros_like(x), torch.tensor([0.5]), x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDPMWuerstchenScheduler().set_timesteps(0)
    with pytest.raises(ValueError, match="scaler"):
        DDPMWuerstchenScheduler(scaler=0)
    with pytest.raises(ValueError, match="set_timesteps"):
        DDPMWuerstchenScheduler().step(torch.zeros(1, 1), torch.tensor([1.0]), torch.zeros(1, 1))


def test_config_round_trip(tmp_path):
    DDPMWuerstchenScheduler(scaler=2.0).save_config(tmp_path)
    assert diffusers.DDPMWuerstchenScheduler.from_pretrained(tmp_path).config.scaler == 2.0
    diffusers.DDPMWuerstchenScheduler(scaler=3.0).save_pretrained(tmp_path / "ref")
    assert DDPMWuerstchenScheduler.from_pretrained(tmp_path / "ref").config.scaler == 3.0


def test_step_at_the_last_ratio_is_the_identity_and_begin_index_is_kept():
    s = DDPMWuerstchenScheduler()
    s.set_timesteps(3)
    s.set_begin_index(1)
    assert s.begin_index == 1
    x = torch.randn(2, 3, 4, 4)
    out = s.step(torch.randn(2, 3, 4, 4), s.timesteps[-1], x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(out, x)
    # one step before: a real (noise-free, to ratio 0) update
    assert not torch.equal(s.step(torch.randn(2, 3, 4, 4), s.timesteps[-2], x).prev_sample, x)
