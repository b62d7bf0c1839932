"""Reproduce the shipped shapes-64 model: ``python -m kernel_shapes_model.train --out models/shapes-64``.

Three stages, each resumable (re-running the command continues from the latest checkpoint):

1. write the configs-only starting folder (:mod:`kernel_shapes_model.recipe`);
2. train the ``AutoencoderKL`` with ``kernel-train-vae``, then fine-tune its decoder alone (sharper
   small shapes; the encoder, and so the latent space, stays as it was);
3. train the UNet and the text encoder together with ``kernel-train-text-to-image``
   (EMA weights are the ones saved).

Single-threaded on purpose: on a small shared CPU, one torch thread per process is faster than
two threads that wait on each other.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

VAE_ARGS = ["--dataset", "shapes", "--dataset_length", "4096", "--max_train_steps", "1500",
            "--train_batch_size", "16", "--learning_rate", "1e-3", "--lr_scheduler", "cosine",
            "--lr_warmup_steps", "30", "--loss", "mse", "--detail_weight", "10", "--log_every", "50",
            "--checkpointing_steps", "250", "--checkpoints_total_limit", "2", "--num_threads", "1"]

DECODER_ARGS = ["--train_decoder_only", "--dataset", "shapes", "--dataset_length", "4096", "--max_train_steps", "1500",
                "--train_batch_size", "16", "--learning_rate", "5e-4", "--lr_scheduler", "cosine",
                "--lr_warmup_steps", "20", "--loss", "mse", "--detail_weight", "10", "--log_every", "50",
                "--checkpointing_steps", "250", "--checkpoints_total_limit", "2", "--num_threads", "1"]

UNET_COMMON = ["--dataset", "shapes", "--dataset_length", "20000", "--train_batch_size", "32",
               "--learning_rate", "1e-3", "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "50",
               "--train_text_encoder", "--caption_dropout", "0.1", "--use_ema", "--ema_decay", "0.995",
               "--log_every", "25", "--checkpoints_total_limit", "4", "--num_threads", "1"]
#: Phase 1 weights the v-loss by min-SNR-5 (fast colour learning); phase 2 drops the weighting, which
#: starved the high-noise steps where the layout (position, shape) is decided.
UNET_PHASES = [["--max_train_steps", "800", "--snr_gamma", "5", "--checkpointing_steps", "200"],
               ["--max_train_steps", "5200", "--checkpointing_steps", "100"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where the finished pipeline goes (e.g. models/shapes-64)")
    p.add_argument("--work", default="work/shapes-64", help="scratch folder for checkpoints")
    args = p.parse_args(argv)

    from kernel_shapes_model.recipe import write_init_folder
    from kernel_train import text_to_image, vae

    work = Path(args.work)
    init = work / "init"
    if not (init / "model_index.json").is_file():
        write_init_folder(init)
    vae_out = work / "vae"
    if not (vae_out / "vae" / "diffusion_pytorch_model.safetensors").is_file():
        vae.main(["--pretrained_model_name_or_path", str(init), "--init_from_config", "--output_dir", str(vae_out),
                  "--resume_from_checkpoint", "latest", *VAE_ARGS])
    base = work / "base"
    if not (base / "model_index.json").is_file():
        shutil.copytree(init, base, dirs_exist_ok=True)
        shutil.copytree(vae_out / "vae", base / "vae", dirs_exist_ok=True)
    decoder_out = work / "vae-decoder"
    if not (decoder_out / "vae" / "diffusion_pytorch_model.safetensors").is_file():
        vae.main(["--pretrained_model_name_or_path", str(base), "--output_dir", str(decoder_out),
                  "--resume_from_checkpoint", "latest", *DECODER_ARGS])
        shutil.copytree(decoder_out / "vae", base / "vae", dirs_exist_ok=True)
    unet_out = work / "unet"
    for phase in UNET_PHASES:
        text_to_image.main(["--pretrained_model_name_or_path", str(base), "--init_from_config", "--output_dir",
                            str(unet_out), "--resume_from_checkpoint", "latest", *UNET_COMMON, *phase])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model_index.json",):
        shutil.copy2(unet_out / name, out / name)
    for name in ("scheduler", "text_encoder", "tokenizer", "unet", "vae"):
        shutil.copytree(unet_out / name, out / name, dirs_exist_ok=True)
    print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
