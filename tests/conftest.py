"""Shared fixtures for the cross-package tests."""

import sys
import uuid

import pytest

from kernel.registry import Entry, Registry, reset_registry

FAKE_PLUGIN_SOURCE = '\nimport torch\nfrom kernel.config import register_to_config\nfrom kernel.modeling import ModelMixin\nfrom kernel.scheduling import SchedulerMixin, SchedulerOutput\nfrom kernel.pipeline import DiffusionPipeline\n\n\nclass TinyModel(ModelMixin):\n    @register_to_config\n    def __init__(self, in_channels: int = 3, out_channels: int = 3, hidden: int = 8):\n        super().__init__()\n        self.conv_in = torch.nn.Conv2d(in_channels, hidden, 3, padding=1)\n        self.conv_out = torch.nn.Conv2d(hidden, out_channels, 3, padding=1)\n\n    def forward(self, sample, timestep=None):\n        return self.conv_out(torch.nn.functional.silu(self.conv_in(sample)))\n\n\nclass TinyScheduler(SchedulerMixin):\n    @register_to_config\n    def __init__(self, num_train_timesteps: int = 1000, step_scale: float = 0.5):\n        self.timesteps = None\n        self.num_inference_steps = None\n        self.init_noise_sigma = 1.0\n\n    def set_timesteps(self, num_inference_steps, device=None):\n        self.num_inference_steps = num_inference_steps\n        self.timesteps = torch.linspace(self.config.num_train_timesteps - 1, 0, num_inference_steps).long()\n\n    def scale_model_input(self, sample, timestep=None):\n        return sample\n\n    def step(self, model_output, timestep, sample, generator=None, return_dict=True):\n        prev = sample - self.config.step_scale * model_output\n        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)\n\n    def set_begin_index(self, begin_index=0):\n        self.begin_index = begin_index\n\n    def add_noise(self, original_samples, noise, timesteps):\n        return original_samples + noise\n\n\nclass TinyPipeline(DiffusionPipeline):\n    model_cpu_offload_seq = "model"\n    _callback_tensor_inputs = ["latents"]\n\n    def __init__(self, model, scheduler, flavour: str = "plain"):\n        super().__init__()\n        self.register_modules(model=model, scheduler=scheduler)\n        self.register_to_config(flavour=flavour)\n\n    @torch.no_grad()\n    def __call__(self, steps=3, generator=None, output_type="pt"):\n        latents = torch.randn((1, 3, 8, 8), generator=generator)\n        self.scheduler.set_timesteps(steps)\n        for t in self.scheduler.timesteps:\n            latents = self.scheduler.step(self.model(latents, t), t, latents).prev_sample\n        return latents\n\n\nclass SecondPipeline(TinyPipeline):\n    pass\n'

BROKEN_SOURCE = "raise RuntimeError('this plugin is broken on purpose')\n"


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """Write a tiny plugin module (model, scheduler, pipelines) and a broken one; return their names."""
    tag = uuid.uuid4().hex[:8]
    good, bad = f"kernel_fake_{tag}", f"kernel_broken_{tag}"
    (tmp_path / f"{good}.py").write_text(FAKE_PLUGIN_SOURCE)
    (tmp_path / f"{bad}.py").write_text(BROKEN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield good, bad
    for name in (good, bad):
        sys.modules.pop(name, None)


@pytest.fixture
def use_registry():
    """Install a registry built from explicit entries; restores the real one afterwards."""

    def install(entries, allowed=None):
        registry = Registry(entries=entries, allowed=allowed)
        reset_registry(registry)
        return registry

    yield install
    reset_registry(None)


def entries_for(module: str, dist: str = "kernel-fake", version: str = "1.0"):
    """Registry entries for the fake plugin's classes."""
    names = ["TinyModel", "TinyScheduler", "TinyPipeline", "SecondPipeline"]
    out = [Entry(n, "kernel.components", f"{module}:{n}", dist, version) for n in names]
    out.append(Entry("tiny", "kernel.aliases", f"{module}:TinyPipeline", dist, version))
    return out


@pytest.fixture
def fake_entries():
    return entries_for
