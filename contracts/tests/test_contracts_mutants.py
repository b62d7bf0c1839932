"""Mutation tests: deliberately broken variants of real components must fail ``check``.

Each mutant subclasses one of the project's own components (resolved through the registry) and
breaks exactly one invariant; the contract that guards it must report a failure with a falsifying
example, and the unbroken original must pass that same contract.
"""

from __future__ import annotations

import json

import pytest
import torch

import kernel
import kernel_contracts

DDIM = kernel.component("DDIMScheduler")
Euler = kernel.component("EulerDiscreteScheduler")
EulerAncestral = kernel.component("EulerAncestralDiscreteScheduler")
UNet2DModel = kernel.component("UNet2DModel")
AutoencoderKL = kernel.component("AutoencoderKL")


# --------------------------------------------------------------------------- scheduler mutants
class OffByOneTimesteps(DDIM):
    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self.timesteps = self.timesteps + 1


class WrongSignStep(Euler):
    def step(self, model_output, timestep, sample, *args, **kwargs):
        return super().step(-model_output, timestep, sample, *args, **kwargs)


class NoiseWithoutGenerator(EulerAncestral):
    def step(self, model_output, timestep, sample, *args, generator=None, **kwargs):
        return super().step(model_output, timestep, sample, *args, generator=None, **kwargs)


class LeakedBatchDimension(DDIM):
    def step(self, *args, **kwargs):
        out = super().step(*args, **kwargs)
        out.prev_sample = out.prev_sample.unsqueeze(0)
        return out


class SilentUpcast(DDIM):
    def step(self, *args, **kwargs):
        out = super().step(*args, **kwargs)
        out.prev_sample = out.prev_sample.float()
        return out


class DropsKeyOnSave(DDIM):
    def to_json_string(self) -> str:
        data = json.loads(super().to_json_string())
        data.pop("prediction_type", None)
        return json.dumps(data)


class MutatesInput(Euler):
    def step(self, model_output, timestep, sample, *args, **kwargs):
        out = super().step(model_output, timestep, sample.clone(), *args, **kwargs)
        sample.mul_(0.5)
        return out


class SwappedAddNoise(DDIM):
    def add_noise(self, original_samples, noise, timesteps):
        return super().add_noise(noise, original_samples, timesteps)


class ForgetsBeginIndex(DDIM):
    def set_begin_index(self, begin_index=0):
        pass  # accepted, then ignored: the loop would not know it starts mid-schedule


# --------------------------------------------------------------------------- autoencoder mutants
def _tiny_vae(cls):
    torch.manual_seed(0)
    return cls(
        latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )


class LossyLatentSpace(AutoencoderKL):
    def denormalize_latents(self, latents):
        return super().denormalize_latents(latents) * 1.01


class MisreportedCompression(AutoencoderKL):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spatial_compression_ratio *= 2


def _vae_inputs(model, batch_size, generator):
    return {"x": torch.rand(batch_size, 3, 16, 16, generator=generator) * 2 - 1}


# --------------------------------------------------------------------------- denoiser mutants
def _tiny_unet(cls):
    torch.manual_seed(0)
    return cls(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )


class BatchLeakingUNet(UNet2DModel):
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.sample = out.sample + out.sample.mean(dim=0, keepdim=True)
        return out


class UpcastingUNet(UNet2DModel):
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.sample = out.sample.float()
        return out


def _unet_inputs(model, batch_size, generator):
    return {"sample": torch.randn(batch_size, 3, 8, 8, generator=generator), "timestep": torch.tensor([7] * batch_size)}


# --------------------------------------------------------------------------- adapter mutants
class MergedLoRA:
    """A minimal real adapter: merges ``scale * B @ A`` into every Linear/1x1-conv weight, keeps the originals."""

    component_kind = "adapter"

    def __init__(self, rank: int = 2, seed: int = 0):
        self.rank, self.seed, self.saved = rank, seed, {}

    def _targets(self, model):
        return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]

    def apply(self, model, scale: float = 1.0):
        g = torch.Generator().manual_seed(self.seed)
        for name, module in self._targets(model):
            w = module.weight
            self.saved[name] = w.detach().clone()
            down = torch.randn(self.rank, w.shape[1], generator=g) * 0.1
            up = torch.randn(w.shape[0], self.rank, generator=g) * 0.1
            with torch.no_grad():
                w.add_(scale * (up @ down))
        return model

    def remove(self, model):
        for name, module in self._targets(model):
            if name in self.saved:
                with torch.no_grad():
                    module.weight.copy_(self.saved.pop(name))
        return model


class ForgetfulLoRA(MergedLoRA):
    def remove(self, model):
        self.saved.pop(next(iter(self.saved)), None)  # loses one layer's original weights
        return super().remove(model)


def _adapter_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))


def _adapter_inputs(model, batch_size, generator):
    return {"input": torch.randn(batch_size, 6, generator=generator)}


# --------------------------------------------------------------------------- the table
UNET_OPTS = {"contract_inputs": _unet_inputs}
VAE_OPTS = {"contract_inputs": _vae_inputs}
ADAPTER_OPTS = {"contract_model": _adapter_model, "contract_inputs": _adapter_inputs}

MUTANTS = [
    # (mutant, original, contract that must catch it, options)
    (OffByOneTimesteps, DDIM, "timestep_range", {}),
    (WrongSignStep, Euler, "exact_model_convergence", {}),
    (NoiseWithoutGenerator, EulerAncestral, "step_deterministic", {}),
    (LeakedBatchDimension, DDIM, "step_shape_dtype", {}),
    (SilentUpcast, DDIM, "step_half_precision", {}),
    (DropsKeyOnSave, DDIM, "save_load_round_trip", {}),
    (MutatesInput, Euler, "step_no_mutation", {}),
    (SwappedAddNoise, DDIM, "add_noise", {}),
    (ForgetsBeginIndex, DDIM, "begin_index", {}),
    (lambda: _tiny_vae(LossyLatentSpace), lambda: _tiny_vae(AutoencoderKL), "latent_normalization_round_trip", VAE_OPTS),
    (lambda: _tiny_vae(MisreportedCompression), lambda: _tiny_vae(AutoencoderKL), "encode_decode_shapes", VAE_OPTS),
    (lambda: _tiny_unet(BatchLeakingUNet), lambda: _tiny_unet(UNet2DModel), "batch_independence", UNET_OPTS),
    (lambda: _tiny_unet(UpcastingUNet), lambda: _tiny_unet(UNet2DModel), "dtype_follows_parameters", UNET_OPTS),
    (ForgetfulLoRA, MergedLoRA, "remove_restores_model", ADAPTER_OPTS),
]


def _id(item):
    mutant = item[0]
    return getattr(mutant, "__name__", "mutant") if isinstance(mutant, type) else item[2]


@pytest.mark.parametrize("mutant, original, contract, options", MUTANTS, ids=[f"{_id(m)}-{m[2]}" for m in MUTANTS])
def test_mutant_fails_and_original_passes(mutant, original, contract, options):
    failures = kernel_contracts.check(mutant, contracts=[contract], **options)
    assert [f.contract for f in failures] == [contract], f"the broken component passed {contract!r}"
    assert failures[0].message
    assert kernel_contracts.check(original, contracts=[contract], **options) == []


def test_failure_carries_the_shrunk_falsifying_example():
    (failure,) = kernel_contracts.check(OffByOneTimesteps, contracts=["timestep_range"])
    # Only linspace/trailing spacings reach 999 + 1; the search must have found one of them.
    assert failure.example["config"].get("timestep_spacing") in ("linspace", "trailing")
    assert "1000" in failure.message
