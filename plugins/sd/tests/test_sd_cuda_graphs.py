"""``Pipeline.enable_cuda_graphs`` and :mod:`kernel.cuda_graphs`.

The CPU tests cover the switch's refusals, eager fallback and output handling; the CUDA tests
(skipped without a GPU) check that graphed steps give bit-identical images and capture once per
input signature.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sd_fixtures as fx  # noqa: E402

import kernel_sd  # noqa: E402
from kernel.cuda_graphs import GraphedForward, _clone_tensors, _signature_item  # noqa: E402
from kernel.outputs import BaseOutput  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pipe():
    pipe = kernel_sd.StableDiffusionPipeline(**fx.sd_components()[1])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_switch_refuses_a_cpu_denoiser():
    pipe = _pipe()
    with pytest.raises(ValueError, match="unet on a CUDA device"):
        pipe.enable_cuda_graphs()
    assert "forward" not in pipe.unet.__dict__


def test_switch_refuses_offload():
    pipe = _pipe()
    pipe.enable_sequential_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="CPU offload"):
        pipe.enable_cuda_graphs()


def test_graphed_forward_arguments():
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedForward(lambda x: x, "cpu")
    with pytest.raises(ValueError, match="warmup"):
        GraphedForward(lambda x: x, "cuda", warmup=0)


def test_grad_mode_runs_eagerly_without_capturing():
    calls = []

    def forward(x, scale=1.0):
        calls.append(x)
        return x * scale

    graphed = GraphedForward(forward, "cuda")  # nothing touches the device until a capture
    x = torch.ones(2, requires_grad=True)
    with torch.enable_grad():
        out = graphed(x, scale=3.0)
    out.sum().backward()
    assert calls == [x] and torch.equal(x.grad, torch.full((2,), 3.0)) and graphed.num_graphs == 0


@dataclasses.dataclass
class _Out(BaseOutput):
    sample: torch.Tensor
    extra: torch.Tensor | None = None


def test_outputs_are_cloned_out_of_the_graph_buffers():
    a, b = torch.arange(4.0), torch.ones(2, 2)
    Pair = collections.namedtuple("Pair", "first second")
    out = _clone_tensors((a, [b, 3], {"k": a}, Pair(a, "s"), _Out(sample=b)))
    flat = [out[0], out[1][0], out[2]["k"], out[3].first, out[4].sample, out[4][0]]
    for got, source in zip(flat, [a, b, a, a, b, b]):
        assert torch.equal(got, source) and got.data_ptr() != source.data_ptr()
    assert out[1][1] == 3 and out[3].second == "s" and isinstance(out[3], Pair) and out[4].extra is None


def test_signature_separates_shapes_dtypes_and_values():
    t = torch.zeros(2, 3)
    assert _signature_item(t) == _signature_item(torch.ones(2, 3))
    assert _signature_item(t) != _signature_item(torch.zeros(3, 2))
    assert _signature_item(t) != _signature_item(t.double())
    assert _signature_item(1) != _signature_item(2) and _signature_item(1) != _signature_item(1.5)
    unhashable = {"a": 1}
    assert _signature_item(unhashable) == ("object", id(unhashable))


@needs_cuda
@torch.no_grad()
def test_graphed_pipeline_images_are_bit_identical_and_captured_once_per_signature():
    pipe = _pipe().to("cuda")
    call = dict(prompt="a red circle", num_inference_steps=4, output_type="pt")
    eager = pipe(**call, generator=fx.gen(0)).images
    pipe.enable_cuda_graphs()
    graphed = pipe(**call, generator=fx.gen(0)).images
    assert torch.equal(graphed, eager)
    forward = pipe.unet.__dict__["forward"]
    assert forward.num_graphs == 1
    pipe(**call, generator=fx.gen(1)).images
    assert forward.num_graphs == 1
    bigger = pipe(**call, height=48, width=48, generator=fx.gen(0)).images
    assert forward.num_graphs == 2
    pipe.disable_cuda_graphs()
    assert "forward" not in pipe.unet.__dict__
    assert torch.equal(pipe(**call, height=48, width=48, generator=fx.gen(0)).images, bigger)


@needs_cuda
@torch.no_grad()
def test_to_turns_graphs_off():
    pipe = _pipe().to("cuda")
    pipe.enable_cuda_graphs()
    pipe.to("cpu")
    assert "forward" not in pipe.unet.__dict__
