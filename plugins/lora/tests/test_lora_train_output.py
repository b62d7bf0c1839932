"""The training plugin's ``--train_lora`` output (a couple of steps on the embedded shapes model) loads back with
``load_lora_weights`` and in Diffusers, with the trained ``lora_alpha``, and both give the same UNet outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("kernel_train")
pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

import kernel  # noqa: E402

BASE = Path(__file__).resolve().parents[3] / "models" / "shapes-64"
RANK, ALPHA = 2, 6.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from kernel_train import text_to_image

    if not (BASE / "model_index.json").is_file():
        pytest.skip("the embedded shapes model is not in this checkout")
    out = tmp_path_factory.mktemp("lora-train")
    text_to_image.main(["--pretrained_model_name_or_path", str(BASE), "--output_dir", str(out), "--train_lora",
                        "--rank", str(RANK), "--lora_alpha", str(ALPHA), "--max_train_steps", "2",
                        "--checkpointing_steps", "100", "--dataset", "shapes", "--dataset_length", "8",
                        "--resolution", "32", "--train_batch_size", "4", "--learning_rate", "5e-2",
                        "--num_threads", "1", "--seed", "0"])
    return out


def _inputs(unet):
    g = torch.Generator().manual_seed(0)
    return dict(sample=torch.randn(1, unet.config.in_channels, 8, 8, generator=g), timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(1, 77, unet.config.cross_attention_dim, generator=g))


@torch.no_grad()
def test_train_lora_output_loads_here_and_in_diffusers(trained):
    from kernel_lora.layers import tuner_layers

    ours = kernel.load(BASE)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(BASE, safety_checker=None, requires_safety_checker=False)
    x = _inputs(ours.unet)
    base = ours.unet(**x).sample
    ours.load_lora_weights(trained)
    theirs.load_lora_weights(trained)
    assert ours.get_list_adapters() == {"unet": ["default_0"]}
    # the trained alpha travels in the file's metadata: scale alpha / rank in both
    scalings = {layer.scaling["default_0"] for _, layer in tuner_layers(ours.unet)}
    assert scalings == {ALPHA / RANK}
    assert {m.scaling["default_0"] for m in theirs.unet.modules() if hasattr(m, "scaling")} == {ALPHA / RANK}
    out = ours.unet(**x).sample
    assert (out - base).abs().max() > 1e-4, "two steps of training should move the LoRA"
    torch.testing.assert_close(out, theirs.unet(**x).sample, atol=1e-4, rtol=0)
