"""Context parallelism (Ulysses, ring with both rotations) on two gloo ranks equals one process."""

import numpy as np
import pytest
import torch

import dist_helpers as H
import kernel
from kernel_distributed import ContextParallelConfig, ParallelConfig, PLANS


@pytest.mark.parametrize("mode", list(H.MODES))
@pytest.mark.parametrize("name", H.MODELS)
def test_forward_equals_single_process(job, name, mode, one_thread):
    reference = H.forward(H.tiny_model(name), H.tiny_inputs(name))
    for rank in (0, 1):  # every rank returns the whole output
        out = torch.load(job["root"] / f"cp_{name}_{mode}_rank{rank}.pt", weights_only=True)
        assert out.shape == reference.shape
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_two_step_pipeline_equals_single_process(job, name, mode, one_thread):
    pipe = kernel.load(job["root"] / f"{name}_pipe")
    reference = H.run_pipeline(pipe, name)
    for rank in (0, 1):
        images = np.load(job["root"] / f"pipe_{name}_{mode}_rank{rank}.npy")
        assert images.shape == reference.shape
        assert np.abs(images - reference).max() <= 1e-4


def test_config_component_and_bad_configs():
    assert kernel.component("ContextParallelConfig") is ContextParallelConfig
    assert ContextParallelConfig(ulysses_degree=2).mesh_shape == (1, 2)
    assert ContextParallelConfig(ring_degree=2, ulysses_degree=3).world_size == 6
    with pytest.raises(ValueError, match="ring_degree or ulysses_degree must be greater than 1"):
        ContextParallelConfig()
    with pytest.raises(ValueError, match="ulysses_degree must be an int >= 1"):
        ContextParallelConfig(ulysses_degree=0)
    with pytest.raises(ValueError, match="ring_degree must be an int >= 1"):
        ContextParallelConfig(ring_degree=2.0)
    with pytest.raises(ValueError, match="rotate_method='alltoall'; use one of"):
        ContextParallelConfig(ring_degree=2, rotate_method="alltoall")
    with pytest.raises(ValueError, match="ulysses_anything=True needs ulysses_degree > 1"):
        ContextParallelConfig(ring_degree=2, ulysses_anything=True)
    with pytest.raises(TypeError, match="context_parallel_config=ContextParallelConfig"):
        ParallelConfig()
    assert set(PLANS) == {"FluxTransformer2DModel", "SD3Transformer2DModel", "PixArtTransformer2DModel"}


def test_enable_parallelism_checks_its_arguments():
    model = H.tiny_model("pixart")
    with pytest.raises(TypeError, match="config=ContextParallelConfig"):
        model.enable_parallelism()
    with pytest.raises(TypeError, match="config must be a ContextParallelConfig"):
        model.enable_parallelism(config={"ulysses_degree": 2})
    with pytest.raises(RuntimeError, match="init_process_group"):  # no process group in this process
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    with pytest.raises(ValueError, match="does not say how attention layer 'transformer_blocks.0.attn2'"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2),
                                 cp_plan={"attention": {"*.attn1": ("image",)}})
    with pytest.raises(ValueError, match="ulysses_degree=4 must divide the head count"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=4))
    with pytest.raises(ValueError, match="names module 'nope'"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2), cp_plan={"nope": {}, "attention": {"*": "local"}})
    from kernel_distributed import ContextParallelInput

    with pytest.raises(ValueError, match="set split_output=True"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2),
                                 cp_plan={"pos_embed": ContextParallelInput(split_dim=1), "attention": {"*": "local"}})
    with pytest.raises(TypeError, match=r"plan entry '': \['x'\] must map to ContextParallelInput"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2),
                                 cp_plan={"": {"x": 1}, "attention": {"*": "local"}})
    assert all(layer.context_parallel is None for layer in model.modules() if hasattr(layer, "attend"))
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_shards_plans_and_launch_errors(monkeypatch):
    from kernel_distributed import init_distributed
    from kernel_distributed.plans import plan_for, shard_sizes
    from kernel_distributed.runtime import timeout_seconds

    assert shard_sizes(7, 2) == [4, 3] and shard_sizes(86, 4) == [22, 22, 21, 21] and sum(shard_sizes(333, 8)) == 333
    assert [t.shape[1] for t in torch.tensor_split(torch.zeros(1, 7), 2, dim=1)] == shard_sizes(7, 2)
    assert plan_for(H.tiny_model("sd3")) is PLANS["SD3Transformer2DModel"]
    with pytest.raises(ValueError, match="Linear has no context-parallel plan"):
        plan_for(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="cp_plan must be a dict"):
        plan_for(torch.nn.Linear(2, 2), cp_plan=[1])
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="the environment lacks RANK, WORLD_SIZE.*torchrun --nproc_per_node"):
        init_distributed()
    with pytest.raises(ValueError, match="backend='ncl'"):
        init_distributed(backend="ncl")
    monkeypatch.setenv("KERNEL_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="KERNEL_DIST_TIMEOUT must be a number of seconds"):
        timeout_seconds()
    monkeypatch.setenv("KERNEL_DIST_TIMEOUT", "30")
    assert timeout_seconds() == 30.0
