"""The shapes-64 model's architecture, and the folder its training starts from.

``python -m kernel_shapes_model.recipe OUT`` writes a Stable-Diffusion-layout folder with
configs only (plus the tokenizer files): the training scripts build each model from its config
with fresh weights (``--init_from_config``).  The full recipe is in ``models/shapes-64/README.md``
and in :data:`TRAIN_COMMANDS`.

Sizes: 64x64 RGB pictures; an ``AutoencoderKL`` with three levels (latents 4x16x16, factor 4);
a ``UNet2DConditionModel`` with block widths (32, 64, 96) and cross-attention at 16x16 and 8x8;
a two-layer CLIP text encoder of width 64 trained together with the UNet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kernel_shapes_model.tokenizer import MODEL_MAX_LENGTH, build_tokenizer

RESOLUTION = 64

VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 32],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 2,
    "sample_size": RESOLUTION,
    "scaling_factor": 1.0,
}

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": RESOLUTION // 4,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 96],
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", SCHEDULER_CONFIG["_class_name"]],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def text_encoder_config(vocab_size: int, bos: int, eos: int) -> dict:
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "projection_dim": 64,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "float32",
    }


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_init_folder(out: str | Path, unet_config: dict | None = None, vae_config: dict | None = None) -> Path:
    """A pipeline folder of configs and tokenizer files for training from scratch."""
    out = Path(out)
    tokenizer = build_tokenizer(out / "tokenizer")
    _write(out / "text_encoder" / "config.json",
           text_encoder_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    _write(out / "unet" / "config.json", unet_config or UNET_CONFIG)
    _write(out / "vae" / "config.json", vae_config or VAE_CONFIG)
    _write(out / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    _write(out / "model_index.json", MODEL_INDEX)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kernel_shapes_model.recipe OUT_FOLDER", file=sys.stderr)
        return 2
    print(write_init_folder(argv[0]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
