"""StableCascadeCombinedPipeline's CPU offload, stage by stage as in Diffusers: each stage pipeline gets its own
hooks (kernel-memory's switches), outputs stay equal to the run without offload (and to Diffusers'), each stage puts
its models back after its call, and remove_all_hooks takes every hook out again.  Run on the CPU (device="cpu")."""

from __future__ import annotations

import functools

import pytest
import torch

from cascade_fixtures import combined_pipes, gen, max_diff

pytest.importorskip("kernel_memory")
pytest.importorskip("diffusers")

RUN = dict(prompt="horse", height=128, width=128, prior_num_inference_steps=2, num_inference_steps=2,
           output_type="pt", negative_prompt="blurry", decoder_guidance_scale=2.0)


@functools.lru_cache(maxsize=None)
def pipes():
    ref, ours = combined_pipes()
    plain = ours(generator=gen(0), **RUN).images
    return ref, ours, plain


def _hooked(module: torch.nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def test_model_offload_stage_by_stage_keeps_outputs():
    ref, ours, plain = pipes()
    ours.enable_model_cpu_offload(device="cpu")
    try:
        # each stage chains its own models in its model_cpu_offload_seq order
        assert [h.model for h in ours.prior_pipe._offload_hooks] == [ours.prior_text_encoder, ours.prior_prior]
        assert [h.model for h in ours.decoder_pipe._offload_hooks] == [ours.text_encoder, ours.decoder, ours.vqgan]
        assert ours._offload_kind == "model" and ours._offload_device == torch.device("cpu")
        offloaded = []
        for stage in (ours.prior_pipe, ours.decoder_pipe):
            for hook in stage._offload_hooks:
                hook.offload = functools.partial(lambda h, f: (offloaded.append(h.model), f())[1], hook, hook.offload)
        out = ours(generator=gen(0), **RUN).images
        assert torch.equal(out, plain)
        # every model went back to the CPU when its stage (and then the combined call) ended
        for model in (ours.prior_text_encoder, ours.prior_prior, ours.text_encoder, ours.decoder, ours.vqgan):
            assert any(m is model for m in offloaded), type(model).__name__
            assert next(model.parameters()).device.type == "cpu"
        with pytest.raises(ValueError, match="offload"):
            ours.to("cpu")
        expected = ref(generator=gen(0), **{**RUN, "output_type": "np"}).images
        assert max_diff(out.permute(0, 2, 3, 1), expected) < 1e-3
    finally:
        ours.remove_all_hooks()
    for model in ours._modules().values():
        assert not _hooked(model)
    assert ours.prior_pipe._offload_device is None and ours.decoder_pipe._offload_device is None
    assert ours._offload_device is None
    assert torch.equal(ours(generator=gen(0), **RUN).images, plain)


def test_offload_needs_an_accelerator():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _, ours, _ = pipes()
    with pytest.raises(ValueError, match="accelerator"):
        ours.enable_model_cpu_offload()
    with pytest.raises(ValueError, match="accelerator"):
        ours.enable_sequential_cpu_offload(device=None)
    assert ours._offload_device is None and ours.prior_pipe._offload_device is None


def test_sequential_offload_keeps_outputs():
    # last in this module: sequential offload leaves the weights on the meta device, as in Diffusers
    _, ours, plain = pipes()
    ours.enable_sequential_cpu_offload(device="cpu")
    try:
        assert ours._offload_kind == "sequential"
        for model in ours._modules().values():
            assert _hooked(model)
            assert {p.device.type for p in model.parameters()} == {"meta"}  # weights kept by the hooks, off the model
        assert torch.equal(ours(generator=gen(0), **RUN).images, plain)
    finally:
        ours.remove_all_hooks()
    assert not any(_hooked(m) for m in ours._modules().values())
