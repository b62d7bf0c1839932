"""IP-Adapter on SDXL pipelines against Diffusers (the image embeddings join SDXL's own added conditions)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import ip_fixtures as ipf  # noqa: E402
from ip_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")


def _loaded(kinds, name="StableDiffusionXLPipeline", **extra):
    d, o = ipf.pipelines(xl=True, name=name, **extra)
    states = [ipf.random_ip_adapter(d.unet, kind, seed=i) for i, kind in enumerate(kinds)]
    for p in (d, o):
        p.load_ip_adapter(states, subfolder=None, weight_name=[None] * len(states), image_encoder_folder=None)
    return d, o


@pytest.mark.parametrize("kinds", [("ip",), ("plus",), ("ip", "plus")], ids=["ip", "plus", "two"])
def test_sdxl_image_prompt_matches_diffusers(kinds):
    d, o = _loaded(kinds)
    images = [ipf.ip_image(i) for i in range(len(kinds))]
    images = images[0] if len(images) == 1 else images
    ours = ipf.run(o, ip_adapter_image=images)
    ipf.assert_close(ours, ipf.run(d, ip_adapter_image=images))
    _, plain = ipf.pipelines(xl=True)
    assert np.abs(ours - ipf.run(plain)).max() > 1e-2


def test_sdxl_embeds_per_block_scale_and_batch_match_diffusers():
    d, o = _loaded(("plus",))
    scale = {"down": {"block_1": [1.0]}, "up": {"block_0": [0.0, 1.0]}}
    for p in (d, o):
        p.set_ip_adapter_scale(scale)
    embeds = o.prepare_ip_adapter_image_embeds(ipf.ip_image(), None, "cpu", 1, True)
    call = dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, ip_adapter_image_embeds=embeds)
    ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call))


@pytest.mark.parametrize("name", ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLPAGPipeline"])
def test_sdxl_image_to_image_and_pag_match_diffusers(name):
    extra = {"pag_applied_layers": ["mid"]} if "PAG" in name else {}
    d, o = _loaded(("ip",), name=name, **extra)
    call = dict(ip_adapter_image=ipf.ip_image())
    if "Img2Img" in name:
        call.update(image=ipf.fx.image(32, 32), strength=0.8, height=None, width=None)
        call = {k: v for k, v in {**ipf.CALL, **call}.items() if k not in ("height", "width")}
        ipf.assert_close(o(generator=ipf.fx.gen(0), **call).images, d(generator=ipf.fx.gen(0), **call).images)
    else:
        call["pag_scale"] = 2.0
        ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call))
