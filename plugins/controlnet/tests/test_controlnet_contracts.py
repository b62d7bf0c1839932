"""The kernel contract suite on everything kernel-controlnet registers for the UNet families.

* The thirteen pipelines (and two-net pipelines, which is how ``MultiControlNetModel`` and
  ``MultiControlNetUnionModel`` are used) run the pipeline contracts, built from our own tiny components.
* ``ControlNetModel`` and ``ControlNetUnionModel`` run the denoiser contracts (batch independence, determinism,
  dtype, save/load, gradients, compile) through a view whose output is shaped like the sample: every residual,
  averaged per item, shifts the input, so the output depends on every residual and parameter.  The union nets
  declare their known failures themselves (their control tokens attend across the batch).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_clip.testing import tiny_clip_text_model
from kernel_contracts import DenoiserContract, PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import cn_fixtures as cf  # noqa: E402
from cn_fixtures import fx, single_thread  # noqa: E402,F401

from kernel_controlnet import ControlNetModel, ControlNetUnionModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ("a photo of a cat", "the dog", "a red house")
SIZE = 32

PIPELINES = {  # name: (xl, task, nets, extra constructor arguments)
    "StableDiffusionControlNetPipeline": (False, "text", 1, {}),
    "StableDiffusionControlNetImg2ImgPipeline": (False, "image", 1, {}),
    "StableDiffusionControlNetInpaintPipeline": (False, "inpaint", 1, {}),
    "StableDiffusionXLControlNetPipeline": (True, "text", 1, {}),
    "StableDiffusionXLControlNetImg2ImgPipeline": (True, "image", 1, {}),
    "StableDiffusionXLControlNetInpaintPipeline": (True, "inpaint", 1, {}),
    "StableDiffusionControlNetPAGPipeline": (False, "text", 1, {"pag_applied_layers": ["mid", "up"]}),
    "StableDiffusionControlNetPAGInpaintPipeline": (False, "inpaint", 1, {"pag_applied_layers": ["mid"]}),
    "StableDiffusionXLControlNetPAGPipeline": (True, "text", 1, {"pag_applied_layers": ["mid"]}),
    "StableDiffusionXLControlNetPAGImg2ImgPipeline": (True, "image", 1, {"pag_applied_layers": ["mid"]}),
    "StableDiffusionXLControlNetUnionPipeline": (True, "union-text", 1, {}),
    "StableDiffusionXLControlNetUnionImg2ImgPipeline": (True, "union-image", 1, {}),
    "StableDiffusionXLControlNetUnionInpaintPipeline": (True, "union-inpaint", 1, {}),
}
MODELS = ["ControlNetModel", "MultiControlNetModel", "ControlNetUnionModel", "MultiControlNetUnionModel"]
CONTRACT_COVERS = ["StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
                   "StableDiffusionControlNetInpaintPipeline", "StableDiffusionXLControlNetPipeline",
                   "StableDiffusionXLControlNetImg2ImgPipeline", "StableDiffusionXLControlNetInpaintPipeline",
                   "StableDiffusionControlNetPAGPipeline", "StableDiffusionControlNetPAGInpaintPipeline",
                   "StableDiffusionXLControlNetPAGPipeline", "StableDiffusionXLControlNetPAGImg2ImgPipeline",
                   "StableDiffusionXLControlNetUnionPipeline", "StableDiffusionXLControlNetUnionImg2ImgPipeline",
                   "StableDiffusionXLControlNetUnionInpaintPipeline",
                   "ControlNetModel", "MultiControlNetModel", "ControlNetUnionModel", "MultiControlNetUnionModel"]
assert set(CONTRACT_COVERS) == set(PIPELINES) | set(MODELS)


@functools.lru_cache(maxsize=None)
def _parts(xl: bool) -> dict:
    """Tiny seeded components (ours), shared by every pipeline of the family."""
    torch.manual_seed(0)
    unet = kernel.component("UNet2DConditionModel")(**(fx.XL_UNET if xl else fx.SD_UNET))
    vae = kernel.component("AutoencoderKL")(**fx.VAE)
    scheduler = kernel.component("EulerDiscreteScheduler")(**fx.SCHED)
    tok = fx.tokenizer("sd1")
    parts = dict(vae=vae.eval(), unet=unet.eval(), scheduler=scheduler, tokenizer=tok,
                 text_encoder=tiny_clip_text_model(tok, seed=2, num_hidden_layers=2))
    if xl:
        tok_2 = fx.tokenizer("sd2")
        parts.update(tokenizer_2=tok_2,
                     text_encoder_2=tiny_clip_text_model(tok_2, seed=3, num_hidden_layers=2, with_projection=True))
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return parts


def _factory(name: str, xl: bool, nets: int, extra: dict):
    make = cf.our_union_controlnet if "Union" in name else functools.partial(cf.our_controlnet, xl=xl)

    def build():
        controlnets = [make(seed=5 + k) for k in range(nets)]
        return kernel.component(name)(**_parts(xl), controlnet=controlnets[0] if nets == 1 else controlnets, **extra)
    build.__name__ = name
    return build


def _inputs(task: str, nets: int):
    def inputs(pipe, batch_size, generator):
        control = [cf.control_image(SIZE, seed=7 + k) for k in range(nets)]
        call = dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_inference_steps=2,
                    generator=generator, height=SIZE, width=SIZE)
        control = control[0] if nets == 1 else control
        kind = task.removeprefix("union-")
        if kind != task:
            call.update(control_image=control, control_mode=[1, 3][:nets] if nets > 1 else 2)
            if kind == "text":
                return call
        elif kind == "text":
            return {**call, "image": control}
        # strength 0.6 of 2 steps runs one step
        call.update(image=[fx.image(SIZE, SIZE, seed=i) for i in range(batch_size)], strength=0.6)
        call.setdefault("control_image", control)
        if kind == "inpaint":
            call["mask_image"] = [fx.mask(SIZE, SIZE)] * batch_size
        return call
    return inputs


#: Beyond the default invalid arguments, each pipeline must refuse a bad control window.
INVALID = [{"num_images_per_prompt": 0}, {"output_type": "not-an-output-type"},
           {"control_guidance_start": 0.5, "control_guidance_end": 0.2}]

for _name, (_xl, _task, _nets, _extra) in PIPELINES.items():
    globals()[f"Test{_name}Contracts"] = type(f"Test{_name}Contracts", (PipelineContract,), {
        "component": staticmethod(_factory(_name, _xl, _nets, _extra)),
        "contract_inputs": staticmethod(_inputs(_task, _nets)),
        "contract_options": {"invalid_inputs": INVALID}, "__module__": __name__})


class TestMultiControlNetPipelineContracts(PipelineContract):
    """MultiControlNetModel in use: two nets with per-net scales and windows."""

    component = staticmethod(_factory("StableDiffusionControlNetPipeline", False, 2, {}))
    contract_options = {"name": "StableDiffusionControlNetPipeline(MultiControlNetModel)",
                        "invalid_inputs": INVALID + [{"controlnet_conditioning_scale": [1.0]}]}

    def contract_inputs(self, pipe, batch_size, generator):
        return {**_inputs("text", 2)(pipe, batch_size, generator), "controlnet_conditioning_scale": [0.5, 1.5],
                "control_guidance_start": [0.0, 0.5]}


class TestMultiControlNetUnionPipelineContracts(PipelineContract):
    """MultiControlNetUnionModel in use: two union nets, one image and mode each, per-net scales and windows."""

    component = staticmethod(_factory("StableDiffusionXLControlNetUnionPipeline", True, 2, {}))
    contract_options = {"name": "StableDiffusionXLControlNetUnionPipeline(MultiControlNetUnionModel)",
                        "invalid_inputs": INVALID + [{"control_mode": [1]}]}

    def contract_inputs(self, pipe, batch_size, generator):
        return {**_inputs("union-text", 2)(pipe, batch_size, generator), "controlnet_conditioning_scale": [0.5, 1.5],
                "control_guidance_start": [0.0, 0.5]}


# ------------------------------------------------------------------ ControlNetModel
class ControlNetDenoiserView(ControlNetModel):
    """``ControlNetModel.forward`` with its residuals folded into one sample-shaped output (for the contracts)."""

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, **kwargs):
        kwargs.pop("return_dict", None)
        down, mid = super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, return_dict=False,
                                    **kwargs)
        shift = sum(r.mean(dim=(1, 2, 3)) for r in (*down, mid))
        return (sample + shift[:, None, None, None],)


def controlnet_view():
    torch.manual_seed(0)
    return cf.randomise_zero_convs(ControlNetDenoiserView(**cf.XL_CN)).eval()


class TestControlNetModelContracts(DenoiserContract):
    component = controlnet_view

    def contract_inputs(self, model, batch_size, generator):
        return dict(sample=torch.randn(batch_size, 4, 8, 8, generator=generator),
                    timestep=torch.tensor([10] * batch_size),
                    encoder_hidden_states=torch.randn(batch_size, 5, 64, generator=generator),
                    controlnet_cond=torch.rand(batch_size, 3, 16, 16, generator=generator),
                    added_cond_kwargs={"text_embeds": torch.randn(batch_size, 32, generator=generator),
                                       "time_ids": torch.randn(batch_size, 6, generator=generator)})


class ControlNetUnionDenoiserView(ControlNetUnionModel):
    """``ControlNetUnionModel.forward`` on two control images (modes 1 and 4), residuals folded as above."""

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, controlnet_cond_2, **kwargs):
        kwargs.pop("return_dict", None)
        kind = self.control_type_of([1, 4], sample.shape[0], device=sample.device, dtype=sample.dtype)
        down, mid = super().forward(sample, timestep, encoder_hidden_states, [controlnet_cond, controlnet_cond_2],
                                    kind, [1, 4], [0.8, 1.2], return_dict=False, **kwargs)
        shift = sum(r.mean(dim=(1, 2, 3)) for r in (*down, mid))
        return (sample + shift[:, None, None, None],)


def union_view():
    torch.manual_seed(0)
    view = ControlNetUnionDenoiserView(**cf.XL_UNION)
    view.load_state_dict(cf.our_union_controlnet(seed=0).state_dict())
    return view.eval()


class TestControlNetUnionModelContracts(DenoiserContract):
    component = union_view

    def contract_inputs(self, model, batch_size, generator):
        inputs = TestControlNetModelContracts.contract_inputs(self, model, batch_size, generator)
        return {**inputs, "controlnet_cond_2": torch.rand(batch_size, 3, 16, 16, generator=generator)}
