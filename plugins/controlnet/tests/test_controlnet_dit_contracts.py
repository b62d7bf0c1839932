"""The kernel contract suite on kernel-controlnet's SD3 and Flux names.

* The five pipelines, plus a two-net SD3 pipeline, a two-net Flux pipeline and a Flux pipeline with one
  union net taking two images (which is how ``SD3MultiControlNetModel`` / ``FluxMultiControlNetModel`` are
  used), run the pipeline contracts, built from our own tiny components.  The SD3 pipelines sample the
  control latents with the global RNG (as Diffusers does), so their inputs seed it from the call's seed.
* ``SD3ControlNetModel`` and ``FluxControlNetModel`` run the denoiser contracts through views whose output
  is shaped like the input latents: every residual, averaged per item, shifts them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import dit_fixtures as df  # noqa: E402

from kernel_controlnet import FluxControlNetModel, SD3ControlNetModel  # noqa: E402

PROMPTS = ("a photo of a cat", "the dog", "a red house")
CONTRACT_COVERS = ["SD3ControlNetModel", "SD3MultiControlNetModel", "FluxControlNetModel", "FluxMultiControlNetModel",
                   "StableDiffusion3ControlNetPipeline", "StableDiffusion3ControlNetInpaintingPipeline",
                   "FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PIPELINES = {  # test name: (pipeline, family, nets, net overrides, as a list, task, extra call arguments)
    "StableDiffusion3ControlNetPipeline": ("StableDiffusion3ControlNetPipeline", "sd3", 1, {}, False, "text", {}),
    "StableDiffusion3ControlNetInpaintingPipeline": ("StableDiffusion3ControlNetInpaintingPipeline", "sd3", 1,
                                                     dict(extra_conditioning_channels=1), False, "control-inpaint", {}),
    "StableDiffusion3ControlNetPipelineTwoNets": ("StableDiffusion3ControlNetPipeline", "sd3", 2, {}, True, "text",
                                                  dict(controlnet_conditioning_scale=[0.5, 1.5],
                                                       control_guidance_start=[0.0, 0.5])),
    "FluxControlNetPipeline": ("FluxControlNetPipeline", "flux", 1, {}, False, "text", {}),
    "FluxControlNetImg2ImgPipeline": ("FluxControlNetImg2ImgPipeline", "flux", 1, dict(num_mode=2), False, "image",
                                      dict(control_mode=1)),
    "FluxControlNetInpaintPipeline": ("FluxControlNetInpaintPipeline", "flux", 1, {}, False, "inpaint", {}),
    "FluxControlNetPipelineTwoNets": ("FluxControlNetPipeline", "flux", 2, {}, True, "text",
                                      dict(controlnet_conditioning_scale=[0.5, 1.5], control_guidance_end=[1.0, 0.5])),
    "FluxControlNetPipelineUnionTwoImages": ("FluxControlNetPipeline", "flux", 1, dict(num_mode=3), True, "text",
                                             dict(controls=2, control_mode=[0, 2])),
}


def _factory(name: str, family: str, nets: int, over: dict, as_list: bool):
    def build():
        build_net = df.sd3_net if family == "sd3" else df.flux_net
        controlnets = [build_net(seed=5 + k, **over) for k in range(nets)]
        return kernel.component(name)(**df.components(family, diffusers_too=False),
                                      controlnet=controlnets if as_list else controlnets[0])
    build.__name__ = name
    return build


def _inputs(family: str, task: str, extra: dict):
    extra = dict(extra)
    controls = extra.pop("controls", 1)

    def inputs(pipe, batch_size, generator):
        if family == "sd3":
            torch.manual_seed(generator.initial_seed())  # the global RNG draws the control latents
        nets = len(getattr(pipe.controlnet, "nets", [None]))
        images = [df.image(7 + k) for k in range(max(nets, controls))]
        call = dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_inference_steps=2,
                    generator=generator, height=df.SIZE, width=df.SIZE, max_sequence_length=16,
                    control_image=images if len(images) > 1 or hasattr(pipe.controlnet, "nets") else images[0])
        if task == "control-inpaint":
            call["control_mask"] = df.mask()
        if task in ("image", "inpaint"):  # strength 0.6 of 2 steps runs both (the flow-matching rounding)
            call.update(image=[df.image(i) for i in range(batch_size)], strength=0.6)
        if task == "inpaint":
            call["mask_image"] = [df.mask()] * batch_size
        return {**call, **extra}
    return inputs


INVALID = [{"num_images_per_prompt": 0}, {"output_type": "not-an-output-type"},
           {"control_guidance_start": 0.5, "control_guidance_end": 0.2}, {"controlnet_conditioning_scale": [1.0] * 5}]

for _test, (_name, _family, _nets, _over, _list, _task, _extra) in PIPELINES.items():
    _invalid = INVALID + ([{"control_mode": 7}] if "control_mode" in _extra else [])
    globals()[f"Test{_test}Contracts"] = type(f"Test{_test}Contracts", (PipelineContract,), {
        "component": staticmethod(_factory(_name, _family, _nets, _over, _list)),
        "contract_inputs": staticmethod(_inputs(_family, _task, _extra)),
        "contract_options": {"invalid_inputs": _invalid, "name": _test}, "__module__": __name__})


# ------------------------------------------------------------------ the models
class SD3ControlNetDenoiserView(SD3ControlNetModel):
    """The residuals (and the last block's text stream, which they do not use) folded into a latent-shaped output."""

    def _block(self, block, x, context, temb):
        context, x = super()._block(block, x, context, temb)
        self._context = context
        return context, x

    def forward(self, hidden_states, controlnet_cond, **kwargs):
        kwargs.pop("return_dict", None)
        samples = super().forward(hidden_states, controlnet_cond, return_dict=False, **kwargs)[0]
        shift = sum(s.mean(dim=(1, 2)) for s in samples) + self._context.mean(dim=(1, 2))
        return (hidden_states + shift[:, None, None, None],)


class FluxControlNetDenoiserView(FluxControlNetModel):
    """Both residual lists folded into a token-shaped output."""

    def forward(self, hidden_states, controlnet_cond, **kwargs):
        kwargs.pop("return_dict", None)
        samples, single = super().forward(hidden_states, controlnet_cond, return_dict=False, **kwargs)
        shift = sum(s.mean(dim=(1, 2)) for s in (*samples, *single))
        return (hidden_states + shift[:, None, None],)


def _view(cls, config: dict):
    def build():
        torch.manual_seed(0)
        return df.randomise(cls(**config), 0, 0.2)
    build.__name__ = cls.__name__
    return build


class TestSD3ControlNetModelContracts(DenoiserContract):
    component = staticmethod(_view(SD3ControlNetDenoiserView, dict(df.SD3_CN, extra_conditioning_channels=1)))

    def contract_inputs(self, model, batch_size, generator):
        return dict(hidden_states=torch.randn(batch_size, 16, 8, 8, generator=generator),
                    controlnet_cond=torch.randn(batch_size, 17, 8, 8, generator=generator),
                    encoder_hidden_states=torch.randn(batch_size, 5, 32, generator=generator),
                    pooled_projections=torch.randn(batch_size, 64, generator=generator),
                    timestep=torch.tensor([500.0] * batch_size))


class TestFluxControlNetModelContracts(DenoiserContract):
    component = staticmethod(_view(FluxControlNetDenoiserView, dict(df.FLUX_CN, num_mode=3)))

    def contract_inputs(self, model, batch_size, generator):
        ids = torch.zeros(4, 4, 3)
        ids[..., 1], ids[..., 2] = torch.arange(4)[:, None], torch.arange(4)[None, :]
        return dict(hidden_states=torch.randn(batch_size, 16, 16, generator=generator),
                    controlnet_cond=torch.randn(batch_size, 16, 16, generator=generator),
                    controlnet_mode=torch.randint(0, 3, (batch_size, 1), generator=generator),
                    encoder_hidden_states=torch.randn(batch_size, 5, 32, generator=generator),
                    pooled_projections=torch.randn(batch_size, 32, generator=generator),
                    timestep=torch.full((batch_size,), 0.5), img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(5, 3),
                    guidance=torch.full((batch_size,), 3.5))
