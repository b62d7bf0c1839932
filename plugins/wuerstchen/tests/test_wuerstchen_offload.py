"""WuerstchenCombinedPipeline's CPU offload, stage by stage as in Diffusers (inherited from Stable Cascade's
combined pipeline): hooks per stage in its model_cpu_offload_seq order, outputs equal to the run without offload
and within 1e-3 of Diffusers', models back after each stage, hooks removed again.  Run on the CPU (device="cpu")."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from wuerstchen_fixtures import combined_pipes, gen

pytest.importorskip("kernel_memory")
pytest.importorskip("diffusers")

RUN = dict(prompt="horse", negative_prompt="blurry", prior_guidance_scale=4.0, decoder_guidance_scale=4.0,
           num_inference_steps=2, prior_num_inference_steps=2, output_type="np", height=128, width=128)


@functools.lru_cache(maxsize=None)
def pipes():
    ref, ours = combined_pipes()
    return ref, ours, ours(generator=gen(0), **RUN).images


def _hooked(module: torch.nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def test_model_offload_stage_by_stage_keeps_outputs():
    ref, ours, plain = pipes()
    ours.enable_model_cpu_offload(device="cpu")
    try:
        assert [h.model for h in ours.prior_pipe._offload_hooks] == [ours.prior_text_encoder, ours.prior_prior]
        assert [h.model for h in ours.decoder_pipe._offload_hooks] == [ours.text_encoder, ours.decoder, ours.vqgan]
        offloaded = []
        for stage in (ours.prior_pipe, ours.decoder_pipe):
            for hook in stage._offload_hooks:
                hook.offload = functools.partial(lambda h, f: (offloaded.append(h.model), f())[1], hook, hook.offload)
        out = ours(generator=gen(0), **RUN).images
        np.testing.assert_array_equal(out, plain)
        for model in (ours.prior_text_encoder, ours.prior_prior, ours.text_encoder, ours.decoder, ours.vqgan):
            assert any(m is model for m in offloaded), type(model).__name__
        assert np.abs(out - ref(generator=gen(0), **RUN).images).max() < 1e-3
    finally:
        ours.remove_all_hooks()
    assert not any(_hooked(m) for m in ours._modules().values())
    assert ours.prior_pipe._offload_device is None and ours.decoder_pipe._offload_device is None


def test_sequential_offload_keeps_outputs():
    _, ours, plain = pipes()
    ours.enable_sequential_cpu_offload(device="cpu")
    try:
        assert ours._offload_kind == "sequential"
        for model in ours._modules().values():
            assert _hooked(model) and {p.device.type for p in model.parameters()} == {"meta"}
        np.testing.assert_array_equal(ours(generator=gen(0), **RUN).images, plain)
    finally:
        ours.remove_all_hooks()
    assert not any(_hooked(m) for m in ours._modules().values())
