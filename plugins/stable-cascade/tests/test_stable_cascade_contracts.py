"""The kernel contract suite on what kernel-stable-cascade registers: the tiny UNet (stage B config), the scheduler
and the pipelines (PaellaVQModel's autoencoder contracts are in test_paella_vq_model.py)."""

from __future__ import annotations

import functools

import torch

from cascade_fixtures import DECODER, PRIOR, combined_pipes, decoder_pipes, prior_pipes
from kernel_contracts import DenoiserContract, PipelineContract, SchedulerContract
from kernel_stable_cascade import StableCascadeUNet

#: The components below are built by functions, which the coverage scan cannot read (PaellaVQModel: its
#: autoencoder contracts are in test_paella_vq_model.py).
CONTRACT_COVERS = ["StableCascadeUNet", "PaellaVQModel", "StableCascadePriorPipeline", "StableCascadeDecoderPipeline",
                   "StableCascadeCombinedPipeline"]


def tiny_unet():
    torch.manual_seed(0)
    return StableCascadeUNet(**DECODER).eval()


class TestStableCascadeUNet(DenoiserContract):
    component = tiny_unet

    def contract_inputs(self, model, batch_size, generator):
        return {"sample": torch.randn(batch_size, 4, 8, 8, generator=generator),
                "timestep_ratio": torch.rand(batch_size, generator=generator),
                "clip_text_pooled": torch.randn(batch_size, 1, 32, generator=generator),
                "effnet": torch.randn(batch_size, 16, 4, 4, generator=generator)}


def tiny_stage_c():
    torch.manual_seed(0)
    return StableCascadeUNet(**PRIOR).eval()


class TestStableCascadeUNetStageC(DenoiserContract):
    """The same class in its stage C (prior) configuration: CLIP text tokens, pooled text and image tokens."""

    component = tiny_stage_c

    def contract_inputs(self, model, batch_size, generator):
        return {"sample": torch.randn(batch_size, 16, 4, 4, generator=generator),
                "timestep_ratio": torch.rand(batch_size, generator=generator),
                "clip_text_pooled": torch.randn(batch_size, 1, 32, generator=generator),
                "clip_text": torch.randn(batch_size, 5, 32, generator=generator),
                "clip_img": torch.randn(batch_size, 1, 768, generator=generator)}


class TestDDPMWuerstchenScheduler(SchedulerContract):
    component = "DDPMWuerstchenScheduler"
    # Timesteps are ratios in [0, 1]; set_timesteps(n) gives n + 1 of them (the pipelines evaluate the first n).
    contract_options = {"timestep_range": (0.0, 1.0), "evaluations": lambda n, order: n + 1}


# ------------------------------------------------------------------ pipelines (ours; tiny sizes, 2 steps)
_N_PLUS_ONE = ("the scheduler's timesteps are n + 1 ratios and the model runs at the first n, so the callback sees "
               "len(scheduler.timesteps) - 1 steps (the interrupt half is tested in test_cascade_pipelines.py)")
_PROMPTS = ("a photo of a cat", "The Dog ", "a red house")


@functools.lru_cache(maxsize=None)
def _pipes(which: str):
    return (prior_pipes if which == "prior" else decoder_pipes)()[1]


def prior_call(pipe, batch_size, generator):
    return dict(prompt=[_PROMPTS[i % 3] for i in range(batch_size)], height=128, width=128, num_inference_steps=2,
                generator=generator)


class TestStableCascadePriorPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _pipes("prior"))
    contract_inputs = staticmethod(prior_call)
    contract_options = {"output_types": ("pt", "np")}
    known_failures = {"callback_on_step_end": _N_PLUS_ONE}


def decoder_call(pipe, batch_size, generator):
    return dict(image_embeddings=torch.randn(batch_size, 16, 2, 2, generator=generator),
                prompt=[_PROMPTS[i % 3] for i in range(batch_size)], num_inference_steps=2, generator=generator)


class TestStableCascadeDecoderPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _pipes("decoder"))
    contract_inputs = staticmethod(decoder_call)
    known_failures = {"callback_on_step_end": _N_PLUS_ONE}


@functools.lru_cache(maxsize=None)
def _combined():
    return combined_pipes()[1]


def combined_call(pipe, batch_size, generator):
    return dict(prompt=[_PROMPTS[i % 3] for i in range(batch_size)], height=128, width=128,
                prior_num_inference_steps=2, num_inference_steps=2, generator=generator)


class TestStableCascadeCombinedPipelineContracts(PipelineContract):
    component = staticmethod(_combined)
    contract_inputs = staticmethod(combined_call)
    known_failures = {"callback_on_step_end": _N_PLUS_ONE}


def test_contract_covers_names_what_the_plugin_registers():
    from importlib.metadata import entry_points

    registered = {ep.name for ep in entry_points(group="kernel.components")
                  if ep.value.startswith("kernel_stable_cascade")}
    assert registered == set(CONTRACT_COVERS) | {"DDPMWuerstchenScheduler"}
