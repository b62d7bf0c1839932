"""The kernel contract suite on SparseControlNetModel (through a denoiser view) and AnimateDiffSparseControlNetPipeline
(pixel and latent condition embeddings), with tiny components built from our own classes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401
from test_animatediff_contracts import OUTPUT_TYPES, PROMPTS, _parts  # noqa: E402
from test_sc_pipelines import randomise, sparse_config  # noqa: E402

from kernel_animatediff.sparse_controlnet import SparseControlNetModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
FRAMES = 3


def _net(simplified: bool):
    torch.manual_seed(5)
    return randomise(kernel.component("SparseControlNetModel")(**sparse_config(simplified)), 5)


def pixel_pipe():
    return kernel.component("AnimateDiffSparseControlNetPipeline")(**_parts(), controlnet=_net(False))


def latent_pipe():
    return kernel.component("AnimateDiffSparseControlNetPipeline")(**_parts(), controlnet=_net(True))


def _inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_frames=FRAMES, height=fx.SIZE,
                width=fx.SIZE, num_inference_steps=2, generator=generator,
                conditioning_frames=fx.video(frames=2, seed=10), controlnet_frame_indices=[0, 2])


INVALID = [{"num_videos_per_prompt": 0}, {"output_type": "not-an-output-type"}, {"conditioning_frames": None},
           {"controlnet_frame_indices": [0, FRAMES]}, {"controlnet_frame_indices": [0]},
           {"control_guidance_start": 0.5, "control_guidance_end": 0.2}]


class TestAnimateDiffSparseControlNetPipelineContracts(PipelineContract):
    component = staticmethod(pixel_pipe)
    contract_inputs = staticmethod(_inputs)
    contract_options = {"invalid_inputs": INVALID, "output_types": OUTPUT_TYPES}


def _seeded_inputs(pipe, batch_size, generator):
    """As Diffusers, the simplified embedding samples the condition images' VAE posterior from the global random
    state: a run is reproducible when that state is seeded too (here from the call's generator)."""
    torch.manual_seed(generator.initial_seed())
    return _inputs(pipe, batch_size, generator)


class TestAnimateDiffSparseControlNetPipelineLatentContracts(PipelineContract):
    component = staticmethod(latent_pipe)
    contract_inputs = staticmethod(_seeded_inputs)
    contract_options = {"name": "AnimateDiffSparseControlNetPipeline(simplified condition embedding)",
                        "invalid_inputs": INVALID[2:4], "output_types": ("np", "latent")}


# ------------------------------------------------------------------ SparseControlNetModel
class SparseControlNetDenoiserView(SparseControlNetModel):
    """``SparseControlNetModel.forward`` with its per-frame residuals folded into one sample-shaped output."""

    component_kind = "denoiser"

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_mask, **kwargs):
        kwargs.pop("return_dict", None)
        down, mid = super().forward(sample, timestep, encoder_hidden_states, controlnet_cond,
                                    conditioning_mask=conditioning_mask, return_dict=False, **kwargs)
        shift = sum(r.mean(dim=(1, 2, 3)) for r in (*down, mid)).reshape(sample.shape[0], sample.shape[2])
        return (sample + shift[:, None, :, None, None],)


def sparse_view():
    view = SparseControlNetDenoiserView(**sparse_config(False))
    view.load_state_dict(_net(False).state_dict())
    return view.eval()


class TestSparseControlNetModelContracts(DenoiserContract):
    component = staticmethod(sparse_view)

    @staticmethod
    def contract_inputs(model, batch_size, generator):
        mask = torch.zeros(batch_size, 1, FRAMES, 16, 16)
        mask[:, :, 1] = 1
        return {"sample": torch.randn(batch_size, 4, FRAMES, 8, 8, generator=generator),
                "timestep": torch.tensor([10] * batch_size),
                "encoder_hidden_states": torch.randn(batch_size, 5, 32, generator=generator),
                "controlnet_cond": torch.rand(batch_size, 3, FRAMES, 16, 16, generator=generator) * mask,
                "conditioning_mask": mask}


CONTRACT_COVERS = ["SparseControlNetModel"]
