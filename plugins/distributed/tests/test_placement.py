"""device_map="balanced": the placement rule on fake memory sizes, the no-GPU error, dispatch and reset."""

import numpy as np
import pytest
import torch

import kernel
from kernel_distributed import balanced_placement
from kernel_distributed.placement import balanced_device_map, dispatch_pipeline
from kernel_generate.command import resolve_model

GB = 2**30


def test_largest_first_in_snake_order():
    sizes = {"vae": GB // 4, "transformer": 10 * GB, "text_encoder": GB // 2, "text_encoder_2": 9 * GB}
    assert balanced_placement(sizes, {0: 24 * GB, 1: 24 * GB}) == {
        "transformer": 0, "text_encoder_2": 1, "text_encoder": 1, "vae": 0}
    # the device with most memory comes first; what does not fit its turn goes to the CPU and keeps the turn
    assert balanced_placement(sizes, {0: 8 * GB, 1: 12 * GB}) == {
        "transformer": 1, "text_encoder_2": "cpu", "text_encoder": 0, "vae": 0}
    assert balanced_placement({"a": 3, "b": 3, "c": 3}, {0: 4, 1: 4, 2: 4}) == {"a": 0, "b": 1, "c": 2}
    assert balanced_placement({"a": 5}, {0: 4}) == {"a": "cpu"}


def test_placement_bad_input():
    with pytest.raises(ValueError, match="memory is empty"):
        balanced_placement({"a": 1}, {})
    with pytest.raises(ValueError, match="sizes must map to non-negative byte counts"):
        balanced_placement({"a": -1}, {0: 4})
    with pytest.raises(TypeError, match="memory must be a dict"):
        balanced_placement({"a": 1}, [4])


@pytest.fixture(scope="module")
def shapes_folder():
    return resolve_model(None)[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-GPUs error")
def test_balanced_without_gpus_is_a_clear_error(shapes_folder):
    with pytest.raises(ValueError, match="device_map='balanced' places the pipeline's components on several GPUs, "
                                         "and this machine has no CUDA device"):
        kernel.load(shapes_folder, device_map="balanced")


def test_other_strategies_are_refused(shapes_folder):
    with pytest.raises(ValueError, match="device_map='auto' for a pipeline: use 'balanced'"):
        kernel.load(shapes_folder, device_map="auto")
    with pytest.raises(ValueError, match="device_map='sequential' for a pipeline"):
        balanced_device_map("sequential")


def _image(pipe):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images


def test_dispatch_sets_hf_device_map_and_reset_undoes_it(shapes_folder, one_thread):
    pipe = kernel.load(shapes_folder)
    assert pipe.hf_device_map is None
    reference = _image(pipe)
    dispatch_pipeline(pipe, {"cpu": 64 * GB})  # the GPU code path, with the CPU as the only "device"
    modules = set(pipe._modules())
    assert pipe.hf_device_map == {name: "cpu" for name in modules}
    assert all(hasattr(m, "_hf_hook") for m in pipe._modules().values())  # accelerate moves inputs and outputs
    np.testing.assert_array_equal(_image(pipe), reference)
    pipe.reset_device_map()
    assert pipe.hf_device_map is None and not any(hasattr(m, "_hf_hook") for m in pipe._modules().values())
    pipe.reset_device_map()  # nothing to undo: no error
    np.testing.assert_array_equal(_image(pipe), reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_balanced_on_gpus(shapes_folder):
    reference = _image(kernel.load(shapes_folder).to("cuda:0"))
    pipe = kernel.load(shapes_folder, device_map="balanced")
    assert set(pipe.hf_device_map) == set(pipe._modules())
    for name, device in pipe.hf_device_map.items():
        assert next(getattr(pipe, name).parameters()).device == torch.device("cuda", device)
    np.testing.assert_allclose(_image(pipe), reference, atol=1e-3)
    # memory just short of the largest component (the UNet, 8x the others together): it stays on the CPU
    from accelerate.utils import compute_module_sizes

    sizes = {n: compute_module_sizes(m)[""] for n, m in pipe._modules().items()}
    largest = max(sizes, key=sizes.get)
    pipe.reset_device_map()
    assert pipe.hf_device_map is None and all(next(m.parameters()).device.type == "cpu" for m in pipe._modules().values())
    tight = kernel.load(shapes_folder, device_map="balanced", max_memory={0: sizes[largest] - 1})
    assert tight.hf_device_map[largest] == "cpu"
    assert all(d == 0 for n, d in tight.hf_device_map.items() if n != largest)
    np.testing.assert_allclose(_image(tight), reference, atol=1e-3)
