"""The shipped shapes-64 model draws what held-out captions ask for (20-caption check).

Every layer runs for real: tokenizer, text encoder, UNet, scheduler, VAE, pipeline, detector.
A regression in any of them shows up as wrong colours or shapes.
"""

import json
from pathlib import Path

import pytest

from kernel_shapes_model import model_path
from kernel_shapes_model.evaluate import evaluate

MAX_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def pipe():
    import torch

    import kernel

    pipeline = kernel.load(str(model_path()))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_model_folder_is_standard_and_small():
    folder = model_path()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / name).is_dir(), name
    weights = list(Path(folder).rglob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) <= MAX_BYTES
    assert not list(Path(folder).rglob("*.bin"))


@pytest.fixture(scope="module")
def result(pipe):
    import torch

    from kernel_generate.command import DEFAULT_GUIDANCE

    with torch.no_grad():
        return evaluate(pipe, count=20, steps=20, guidance=DEFAULT_GUIDANCE, seed=0, batch_size=20)


def test_twenty_held_out_captions_colour_bar(result):
    assert result["colour"] >= 0.80, {k: result[k] for k in ("colour", "shape", "position")}


def test_twenty_held_out_captions_shape_bar(result):
    assert result["shape"] >= 0.70, {k: result[k] for k in ("colour", "shape", "position")}
