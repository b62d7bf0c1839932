"""The kernel contract suite on everything kernel-t2i-adapter registers.

* Both pipelines (and a two-adapter pipeline, which is how ``MultiAdapter`` is used) run the pipeline
  contracts, built from our own tiny components.
* ``T2IAdapter`` runs the denoiser contracts (batch independence, determinism, dtype, save/load, gradients,
  compile) through a view whose output is shaped like its input: every feature map, averaged per item, shifts
  the image, so the output depends on every feature and parameter.
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
import t2i_fixtures as tf  # noqa: E402
from t2i_fixtures import fx, single_thread  # noqa: E402,F401

from kernel_t2i_adapter import T2IAdapter  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ("a photo of a cat", "the dog", "a red house")
SIZE = 32
PIPELINES = {"StableDiffusionAdapterPipeline": False, "StableDiffusionXLAdapterPipeline": True}  # name: xl
CONTRACT_COVERS = ["StableDiffusionAdapterPipeline", "StableDiffusionXLAdapterPipeline", "T2IAdapter",
                   "MultiAdapter"]


@functools.lru_cache(maxsize=None)
def _parts(xl: bool) -> dict:
    """Tiny seeded components (ours), shared by the pipelines of the family."""
    torch.manual_seed(0)
    unet_config = {**fx.XL_UNET, **tf.XL_UNET_OVER} if xl else {**fx.SD_UNET, **tf.SD_UNET_OVER}
    unet = kernel.component("UNet2DConditionModel")(**unet_config)
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


def _factory(name: str, xl: bool, adapters: int):
    def build():
        kind = "full_adapter_xl" if xl else "full_adapter"
        made = [tf.our_adapter(kind, seed=3 + k) for k in range(adapters)]
        return kernel.component(name)(**_parts(xl), adapter=made[0] if adapters == 1 else made)
    build.__name__ = name
    return build


def _inputs(adapters: int):
    def inputs(pipe, batch_size, generator):
        images = [tf.control_image(SIZE, seed=7 + k) for k in range(adapters)]
        return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_inference_steps=2,
                    generator=generator, height=SIZE, width=SIZE, image=images[0] if adapters == 1 else images)
    return inputs


#: Beyond the default invalid arguments, each pipeline must refuse a bad scale.
INVALID = [{"num_images_per_prompt": 0}, {"output_type": "not-an-output-type"},
           {"adapter_conditioning_scale": float("inf")}]

for _name, _xl in PIPELINES.items():
    globals()[f"Test{_name}Contracts"] = type(f"Test{_name}Contracts", (PipelineContract,), {
        "component": staticmethod(_factory(_name, _xl, 1)),
        "contract_inputs": staticmethod(_inputs(1)),
        "contract_options": {"invalid_inputs": INVALID}, "__module__": __name__})


class TestMultiAdapterPipelineContracts(PipelineContract):
    """MultiAdapter in use: two adapters with their own scales and a factor."""

    component = staticmethod(_factory("StableDiffusionXLAdapterPipeline", True, 2))
    contract_options = {"name": "StableDiffusionXLAdapterPipeline(MultiAdapter)",
                        "invalid_inputs": INVALID + [{"adapter_conditioning_scale": [1.0]},
                                                     {"adapter_conditioning_factor": -0.5}]}

    def contract_inputs(self, pipe, batch_size, generator):
        return {**_inputs(2)(pipe, batch_size, generator), "adapter_conditioning_scale": [0.5, 1.5],
                "adapter_conditioning_factor": 0.5}


# ------------------------------------------------------------------ T2IAdapter
class T2IAdapterDenoiserView(T2IAdapter):
    """``T2IAdapter.forward`` with its features folded into one image-shaped output (for the contracts)."""

    def forward(self, sample):
        shift = sum(f.mean(dim=(1, 2, 3)) for f in super().forward(sample))
        return (sample + shift[:, None, None, None],)


@pytest.mark.parametrize("kind", ["full_adapter", "light_adapter", "full_adapter_xl"])
def test_view_output_depends_on_every_feature(kind):
    """The view is a fair stand-in: dropping any feature map changes its output."""
    torch.manual_seed(0)
    view = T2IAdapterDenoiserView(**tf.ADAPTERS[kind]).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        features = T2IAdapter.forward(view, x)
        assert len(features) >= 2 and all(f.abs().mean() > 0 for f in features)
        assert torch.equal(view(x)[0], x + sum(f.mean() for f in features))


class TestT2IAdapterContracts(DenoiserContract):
    component = staticmethod(lambda: T2IAdapterDenoiserView(**tf.ADAPTERS["full_adapter_xl"]).eval())

    def contract_inputs(self, model, batch_size, generator):
        return dict(sample=torch.rand(batch_size, 3, 16, 16, generator=generator))


class TestLightT2IAdapterContracts(DenoiserContract):
    component = staticmethod(lambda: T2IAdapterDenoiserView(**tf.ADAPTERS["light_adapter"]).eval())
    contract_options = {"name": "T2IAdapter(light_adapter)"}

    def contract_inputs(self, model, batch_size, generator):
        return dict(sample=torch.rand(batch_size, 3, 16, 16, generator=generator))
