"""enable_group_offload: with onload_device=cpu the outputs are bit-identical to no offloading;
groups move in and out around their blocks; pipelines; bad input."""

from __future__ import annotations

import pytest
import torch

from kernel_memory.offload import remove_group_offloading
from kernel_memory.testing import MODELS, model_inputs, run, tiny_model, tiny_sd_pipeline

OPTIONS = [dict(offload_type="block_level", num_blocks_per_group=1),
           dict(offload_type="block_level", num_blocks_per_group=2), dict(offload_type="leaf_level")]


@pytest.mark.parametrize("options", OPTIONS, ids=["block1", "block2", "leaf"])
@pytest.mark.parametrize("kind", MODELS)
def test_bit_identical_to_no_offloading(kind, options):
    model = tiny_model(kind)
    x = model_inputs(kind)
    ref = run(model, x)
    model.enable_group_offload(onload_device="cpu", offload_device="cpu", **options)
    assert torch.equal(run(model, x), ref)
    assert torch.equal(run(model, x), ref)  # and again, with the groups offloaded in between
    remove_group_offloading(model)
    assert torch.equal(run(model, x), ref)


def test_groups_move_in_only_around_their_blocks():
    model = tiny_model("flux")
    model.enable_group_offload(onload_device="cpu", offload_type="block_level", num_blocks_per_group=1)
    state = model._kernel_group_offload
    assert len(state.groups) == 1 + 1 + 2  # one transformer block, two single blocks, the rest
    seen = []
    for block in list(model.transformer_blocks) + list(model.single_transformer_blocks):
        block.register_forward_pre_hook(lambda m, a: seen.append(sum(g.onloaded for g in state.groups)))
    run(model, model_inputs("flux"))
    assert seen == [2, 2, 2]  # the running block's group and the rest, nothing else
    assert not any(g.onloaded for g in state.groups)


def test_pipeline_group_offload_is_bit_identical():
    pipe = tiny_sd_pipeline()
    call = dict(prompt="a cube", num_inference_steps=2, height=32, width=32, output_type="np")
    ref = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    pipe.enable_group_offload(onload_device="cpu", offload_type="leaf_level", exclude_modules="vae")
    assert pipe._execution_device == torch.device("cpu")
    assert "_kernel_group_offload" in pipe.unet.__dict__ and "_kernel_group_offload" not in pipe.vae.__dict__
    out = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert (out == ref).all()


def test_combines_with_layerwise_casting():
    model = tiny_model("sd3")
    x = model_inputs("sd3")
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    ref = run(model, x)
    model.enable_group_offload(onload_device="cpu", offload_type="leaf_level")
    assert torch.equal(run(model, x), ref)


def test_bad_input():
    model = tiny_model("flux")
    with pytest.raises(ValueError, match="offload_type"):
        model.enable_group_offload(onload_device="cpu", offload_type="layer_level")
    with pytest.raises(ValueError, match="num_blocks_per_group"):
        model.enable_group_offload(onload_device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="use_stream"):
            model.enable_group_offload(onload_device="cpu", offload_type="leaf_level", use_stream=True)
    with pytest.raises(ValueError, match="offload_to_disk_path"):
        model.enable_group_offload(onload_device="cpu", offload_type="leaf_level", offload_to_disk_path="/tmp/x")
    with pytest.raises(TypeError, match="exclude_modules"):
        model.enable_group_offload(onload_device="cpu", offload_type="leaf_level", exclude_modules=["x"])
    with pytest.raises(ValueError, match="not model components"):
        tiny_sd_pipeline().enable_group_offload(onload_device="cpu", offload_type="leaf_level", exclude_modules="nope")
