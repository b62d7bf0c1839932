"""Train an ``AutoencoderKL`` (Kingma & Welling 2014; the first stage of Rombach et al. 2022).

Loss: L1 (default) or squared reconstruction error of a posterior sample plus ``--kl_weight`` times the
KL divergence to a standard normal.  The adversarial and perceptual terms of the LDM paper are
left out: they matter for natural images, less for the flat-colour pictures this is used for.

At the end ``scaling_factor`` is set to ``1 / std`` of the latents of the training pictures, so
the denoiser sees latents of unit variance (the role of SD's 0.18215), and the model is saved
to ``<output_dir>/vae``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from kernel_train import common
from kernel_train.datasets import load_dataset, pixel_tensor
from kernel_train.ema import EMAModel
from kernel_train.models import load_component, read_index


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kernel-train-vae", description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained_model_name_or_path", required=True, help="a pipeline folder with a vae/ subfolder")
    p.add_argument("--init_from_config", action="store_true", help="start from fresh weights built from vae/config.json")
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--loss", default="l1", choices=["l1", "mse"],
                   help="reconstruction loss (l1 keeps small coloured details sharper, as in the LDM VAE)")
    p.add_argument("--detail_weight", type=float, default=0.0,
                   help="extra loss weight on pixels that differ from the picture's median colour (small "
                        "foreground objects on plain backgrounds); 0 = plain per-pixel loss")
    p.add_argument("--train_decoder_only", action="store_true",
                   help="freeze the encoder (the latent space, and so any denoiser trained on it, stays valid) "
                        "and fine-tune the decoder, as Stable Diffusion's ft-MSE VAE was made")
    p.add_argument("--scaling_samples", type=int, default=2048, help="pictures used to measure the latent std")
    common.add_common_args(p)
    args = p.parse_args(argv)
    common.check_common_args(args)
    if args.kl_weight < 0:
        raise ValueError(f"--kl_weight must be >= 0, got {args.kl_weight}")
    return args


def reconstruction_loss(vae, pixels: torch.Tensor, generator: torch.Generator, kl_weight: float, kind: str = "l1",
                        detail_weight: float = 0.0):
    dist = vae.encode(pixels).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(pixels.device)
    recon = vae.decode(z).sample.float()
    target = pixels.float()
    mse = F.mse_loss(recon, target)
    err = (recon - target).abs() if kind == "l1" else (recon - target).pow(2)
    if detail_weight:
        median = target.flatten(2).median(dim=2).values[:, :, None, None]
        err = err * (1 + detail_weight * (target - median).abs().mean(dim=1, keepdim=True))
    rec = err.mean()
    kl = 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).sum(dim=(1, 2, 3)).mean()
    return rec + kl_weight * kl, mse


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = Path(args.pretrained_model_name_or_path)
    index = read_index(source)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = common.make_accelerator(args)
    device = accelerator.device
    log = common.MetricsLog(args.output_dir, accelerator.is_main_process)

    dataset = load_dataset(args.dataset, args.resolution, args.dataset_length, args.seed)
    vae = load_component(source, index, "vae", args.init_from_config, seed=args.seed).train().to(device)
    pixels, _ = pixel_tensor(dataset, args.resolution)

    if args.train_decoder_only:
        for module in (vae.encoder, getattr(vae, "quant_conv", None)):
            if module is not None:
                module.requires_grad_(False)
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay)
    lr_scheduler = common.make_lr_scheduler(optimizer, args.lr_scheduler, args.lr_warmup_steps, args.max_train_steps)
    ema = EMAModel(trained, decay=args.ema_decay) if args.use_ema else None
    vae, optimizer, lr_scheduler = accelerator.prepare(vae, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)

    start = 0
    resume = common.find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if resume is not None:
        accelerator.load_state(str(resume))
        start = common.checkpoint_step(resume)
        accelerator.print(f"resumed from {resume} at step {start}")

    for step in range(start, args.max_train_steps):
        step_loss = step_mse = 0.0
        for micro in range(args.gradient_accumulation_steps):
            with accelerator.accumulate(vae):
                g = common.step_generator(args.seed, step, micro)
                idx = common.batch_indices(len(pixels), args.train_batch_size, args.seed, step, micro,
                                           args.gradient_accumulation_steps)
                loss, mse = reconstruction_loss(vae, pixels[idx].to(device), g, args.kl_weight, args.loss,
                                                args.detail_weight)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(trained, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach().item() / args.gradient_accumulation_steps
                step_mse += mse.detach().item() / args.gradient_accumulation_steps
        if ema is not None:
            ema.step(trained)
        done = step + 1
        if done % args.log_every == 0 or done == args.max_train_steps or done == start + 1:
            log.write(step=done, loss=step_loss, mse=step_mse, lr=lr_scheduler.get_last_lr()[0])
        if done % args.checkpointing_steps == 0 and accelerator.is_main_process:
            common.save_checkpoint(accelerator, args.output_dir, done, args.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(vae)
        if ema is not None:
            ema.copy_to(trained)
        vae.eval()
        if args.train_decoder_only:  # same encoder, same latents: keep the scaling factor
            vae.save_pretrained(str(Path(args.output_dir) / "vae"))
            accelerator.end_training()
            return 0
        with torch.no_grad():
            sample = pixels[: args.scaling_samples].to(device)
            latents = torch.cat([vae.encode(sample[i: i + 256]).latent_dist.mean for i in range(0, len(sample), 256)])
        scaling = float(1.0 / latents.float().std())
        vae.register_to_config(scaling_factor=round(scaling, 5))
        vae.save_pretrained(str(Path(args.output_dir) / "vae"))
        log.write(step=args.max_train_steps, scaling_factor=scaling)
    accelerator.end_training()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
