"""Build the benchmark checkpoints once (seeded random weights, Diffusers format) into a cache folder.

Diffusers is the oracle here: it writes the folders, so both libraries load the very same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CACHE = Path(os.environ.get("KERNEL_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".bench-cache"))


def write_tokenizer(folder: Path, model_max_length: int = 77) -> None:
    """A small character-level CLIP BPE tokenizer (vocab.json + merges.txt), no download."""
    import string

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(folder))


SD15_UNET = dict(sample_size=64, cross_attention_dim=768)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
SD15_CLIP = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")
TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=32,
                 attention_head_dim=8)
TINY_VAE = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, norm_num_groups=32)
TINY_CLIP = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=1000, projection_dim=32,
                 bos_token_id=84, eos_token_id=85, pad_token_id=85)  # ids of write_tokenizer's special tokens


def build_sd_folder(name: str, unet: dict, vae: dict, clip: dict, fp16_variant: bool = False) -> Path:
    """Save a seeded random SD-layout pipeline with Diffusers (once) and return its folder."""
    folder = CACHE / name
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tmp = folder.with_name(folder.name + ".tmp")
    write_tokenizer(tmp / "tokenizer")
    components = dict(
        unet=UNet2DConditionModel(**unet),
        vae=AutoencoderKL(**vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**clip)),
        tokenizer=CLIPTokenizer.from_pretrained(str(tmp / "tokenizer")),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe = StableDiffusionPipeline(**components)
    if fp16_variant:  # first, so the float32 save below writes the configs (transformers reads its dtype)
        pipe.to(torch.float16).save_pretrained(tmp, variant="fp16")
        pipe.to(torch.float32)
    pipe.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def sd15_folder() -> Path:
    return build_sd_folder("sd15-random", SD15_UNET, SD15_VAE, SD15_CLIP, fp16_variant=True)


def tiny_folder() -> Path:
    return build_sd_folder("sd-tiny", TINY_UNET, TINY_VAE, TINY_CLIP)


def weights_bytes(folder: Path, variant: str | None = None) -> int:
    total = 0
    for f in folder.rglob("*.safetensors"):
        is_variant = variant is not None and f.name.endswith(f".{variant}.safetensors")
        plain = variant is None and f.name.count(".") == 1
        if is_variant or plain:
            total += f.stat().st_size
    return total
