"""PipelineQuantizationConfig with the bitsandbytes backends on a tiny SD pipeline (our UNet, the
transformers CLIP text encoder through transformers' own BitsAndBytesConfig), and the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel
from kernel_quant_bitsandbytes import BitsAndBytesConfig
from kernel_memory import PipelineQuantizationConfig
from kernel_memory.testing import tiny_sd_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from bnb_helpers import diffusers_on_cpu  # noqa: E402

CALL = dict(prompt="a red cube", num_inference_steps=2, height=32, width=32, output_type="np")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def images(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**CALL, generator=torch.Generator().manual_seed(0)).images


def test_components_to_quantize(sd_folder, tmp_path):
    import bitsandbytes as bnb

    ref = images(kernel.load(sd_folder))
    config = PipelineQuantizationConfig(quant_backend="bitsandbytes_8bit", quant_kwargs={"load_in_8bit": True},
                                        components_to_quantize=["unet", "text_encoder"])
    pipe = kernel.load("sd", sd_folder, quantization_config=config, torch_dtype=torch.float32)
    assert isinstance(pipe.unet.time_embedding.linear_1, bnb.nn.Linear8bitLt)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in pipe.text_encoder.modules())
    assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in pipe.vae.modules())
    assert type(config.config_mapping["text_encoder"]).__module__.startswith("transformers")
    out = images(pipe)
    assert np.abs(out - ref).max() < 0.1  # measured 0.04 (pixels in [0, 1])

    pipe.save_pretrained(tmp_path / "q")  # the quantized UNet keeps its quantization_config
    again = kernel.load(tmp_path / "q", torch_dtype=torch.float32)
    assert isinstance(again.unet.time_embedding.linear_1, bnb.nn.Linear8bitLt)
    assert np.array_equal(images(again), out)


def test_quant_mapping_and_every_model_by_default(sd_folder):
    import bitsandbytes as bnb

    config = PipelineQuantizationConfig(quant_mapping={"unet": BitsAndBytesConfig(load_in_4bit=True)})
    pipe = kernel.load(sd_folder, quantization_config=config, torch_dtype=torch.float32)
    assert isinstance(pipe.unet.time_embedding.linear_1, bnb.nn.Linear4bit)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in pipe.text_encoder.modules())
    config = PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit", quant_kwargs={"load_in_4bit": True})
    pipe = kernel.load(sd_folder, quantization_config=config, torch_dtype=torch.float32)
    assert set(config.config_mapping) == {"unet", "vae", "text_encoder"}
    assert isinstance(pipe.unet.time_embedding.linear_1, bnb.nn.Linear4bit)
    assert np.isfinite(images(pipe)).all()


def test_same_images_as_diffusers_pipeline_quantization(sd_folder):
    diffusers = pytest.importorskip("diffusers")
    diffusers_on_cpu()
    kwargs = dict(quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, components_to_quantize=["unet"])
    ours = kernel.load(sd_folder, torch_dtype=torch.float32,
                       quantization_config=PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit", **kwargs))
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(
        sd_folder, torch_dtype=torch.float32,
        quantization_config=diffusers.PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit", **kwargs))
    assert np.abs(images(ours) - images(theirs)).max() < 1e-3


def test_bad_input(sd_folder):
    with pytest.raises(ValueError, match="unknown quantization backend.*bitsandbytes_4bit"):
        PipelineQuantizationConfig(quant_backend="bitsandbytes_3bit", quant_kwargs={"load_in_4bit": True})
    with pytest.raises(ValueError, match="cannot both be True"):
        PipelineQuantizationConfig(quant_backend="bitsandbytes_8bit",
                                   quant_kwargs={"load_in_8bit": True, "load_in_4bit": True})
    with pytest.raises(ValueError, match="needs quant_backend"):
        PipelineQuantizationConfig()
    with pytest.raises(TypeError, match="quant_mapping"):
        PipelineQuantizationConfig(quant_mapping={"unet": {"load_in_8bit": True}})
    for component, message in (("scheduler", "cannot quantize scheduler"), ("tokenizer", "cannot quantize tokenizer"),
                               ("transformer", "does not have")):
        config = PipelineQuantizationConfig(quant_backend="bitsandbytes_8bit", quant_kwargs={"load_in_8bit": True},
                                            components_to_quantize=[component])
        with pytest.raises(ValueError, match=message):
            kernel.load(sd_folder, quantization_config=config)
    with pytest.raises(TypeError, match="PipelineQuantizationConfig"):
        kernel.load(sd_folder, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
