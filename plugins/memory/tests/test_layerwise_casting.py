"""enable_layerwise_casting: fp8 storage, per-layer upcast; against a reference that casts the same
way, and against Diffusers' own layerwise casting of the same weights."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from kernel_memory.casting import CASTABLE, DEFAULT_SKIP_MODULES_PATTERN
from kernel_memory.testing import MODELS, TINY, model_inputs, run, tiny_model

FP8 = torch.float8_e4m3fn


def rounded_reference(model, storage, compute, patterns=DEFAULT_SKIP_MODULES_PATTERN):
    """The model with every castable, non-skipped layer's weights rounded through ``storage``."""
    ref = copy.deepcopy(model)
    skipped = [n for n, _ in ref.named_modules() if n and any(re.search(p, n) for p in patterns)]
    with torch.no_grad():
        for name, m in ref.named_modules():
            if isinstance(m, CASTABLE) and not any(name == s or name.startswith(s + ".") for s in skipped):
                for p in m.parameters(recurse=False):
                    p.data = p.data.to(storage).to(compute)
    return ref


@pytest.mark.parametrize("kind", MODELS)
def test_fp8_storage_matches_a_reference_that_casts_the_same_way(kind):
    model = tiny_model(kind)
    ref = rounded_reference(model, FP8, torch.float32)
    x = model_inputs(kind)
    full = run(model, x)
    before = model.get_memory_footprint()
    layers = model.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=torch.float32)
    assert layers and not any(re.search("norm|pos_embed", n) for n in layers)
    out = run(model, x)
    assert torch.equal(out, run(ref, x))
    assert not torch.equal(out, full)
    # The cast layers' weights are stored in one byte instead of four, also after a forward.
    stored = {p.dtype for n in layers for p in model.get_submodule(n).parameters(recurse=False)}
    assert stored == {FP8}
    cast_bytes = sum(p.numel() for n in layers for p in model.get_submodule(n).parameters(recurse=False))
    assert before - model.get_memory_footprint() == 3 * cast_bytes


@pytest.mark.parametrize("kind", MODELS)
def test_same_outputs_as_diffusers_layerwise_casting(kind):
    diffusers = pytest.importorskip("diffusers")
    ours = tiny_model(kind)
    theirs = getattr(diffusers, TINY[kind][0])(**TINY[kind][1]).eval()
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        model.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=torch.float32)
    x = model_inputs(kind)
    assert (run(ours, x) - run(theirs, x)).abs().max() <= 1e-5
    assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in theirs.named_parameters()}


def test_bf16_compute_and_custom_patterns():
    model = tiny_model("flux").to(torch.bfloat16)
    layers = model.enable_layerwise_casting(skip_modules_pattern=["x_embedder", r"single_transformer_blocks\.1"])
    assert model.x_embedder.weight.dtype == torch.bfloat16
    assert model.single_transformer_blocks[1].proj_out.weight.dtype == torch.bfloat16
    assert model.norm_out.linear.weight.dtype == FP8  # the user's patterns replace the defaults
    assert "proj_out" in layers
    out = run(model, model_inputs("flux", dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_on_a_pipeline_the_denoiser_is_cast():
    from kernel_memory.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    call = dict(prompt="a cube", num_inference_steps=2, height=32, width=32, output_type="np")
    ref = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    layers = pipe.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=torch.float32)
    assert layers and all(n.startswith("unet.") for n in layers)
    assert pipe.vae.decoder.conv_in.weight.dtype == torch.float32
    out = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert 0 < abs(out - ref).max() < 0.15  # measured 0.10: fp8 keeps 3 mantissa bits


def test_bad_input():
    model = tiny_model("flux")
    with pytest.raises(TypeError, match="storage_dtype"):
        model.enable_layerwise_casting(storage_dtype=torch.int8)
    with pytest.raises(TypeError, match="compute_dtype"):
        model.enable_layerwise_casting(compute_dtype="bf16")
    from kernel_memory.testing import tiny_sd_pipeline

    with pytest.raises(ValueError, match="not model components"):
        tiny_sd_pipeline().enable_layerwise_casting(components=["scheduler"])
