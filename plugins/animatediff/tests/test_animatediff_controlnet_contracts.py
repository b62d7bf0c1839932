"""The kernel contract suite on AnimateDiffControlNetPipeline (one net, and a two-net MultiControlNetModel), with
tiny components built from our own classes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401
from test_animatediff_contracts import OUTPUT_TYPES, PROMPTS, _parts  # noqa: E402
from test_animatediff_controlnet import CN, ZERO_INIT  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
FRAMES = 3


def _net(seed: int):
    torch.manual_seed(seed)
    net = kernel.component("ControlNetModel")(**CN)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(ZERO_INIT):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def one_net():
    return kernel.component("AnimateDiffControlNetPipeline")(**_parts(), controlnet=_net(5))


def two_nets():
    return kernel.component("AnimateDiffControlNetPipeline")(**_parts(), controlnet=[_net(5), _net(6)])


def _inputs(nets: int):
    def inputs(pipe, batch_size, generator):
        frames = [fx.video(frames=FRAMES, seed=10 + k) for k in range(nets)]
        return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_frames=FRAMES,
                    height=fx.SIZE, width=fx.SIZE, num_inference_steps=2, generator=generator,
                    conditioning_frames=frames[0] if nets == 1 else frames)
    return inputs


INVALID = [{"num_videos_per_prompt": 0}, {"output_type": "not-an-output-type"}, {"conditioning_frames": None},
           {"conditioning_frames": fx.video(frames=FRAMES + 1)}, {"control_guidance_start": 0.5,
                                                                  "control_guidance_end": 0.2}]


class TestAnimateDiffControlNetPipelineContracts(PipelineContract):
    component = staticmethod(one_net)
    contract_inputs = staticmethod(_inputs(1))
    contract_options = {"invalid_inputs": INVALID, "output_types": OUTPUT_TYPES}


class TestAnimateDiffMultiControlNetPipelineContracts(PipelineContract):
    component = staticmethod(two_nets)
    contract_inputs = staticmethod(_inputs(2))
    contract_options = {"name": "AnimateDiffControlNetPipeline(MultiControlNetModel)",
                        "invalid_inputs": [{"conditioning_frames": [fx.video(frames=FRAMES)]},
                                           {"controlnet_conditioning_scale": [1.0]}],
                        "output_types": OUTPUT_TYPES}
