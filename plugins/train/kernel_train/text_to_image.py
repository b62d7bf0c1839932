"""Train a Stable-Diffusion-layout text-to-image model (denoiser; optionally the text encoder, or LoRA).

The objective is DDPM's (Ho et al. 2020): noise a latent ``z0`` to ``zt = sqrt(ab_t) z0 +
sqrt(1 - ab_t) eps`` at a random timestep and regress the denoiser's output onto ``eps`` (or
onto ``v = sqrt(ab_t) eps - sqrt(1 - ab_t) z0``, Salimans & Ho 2022), optionally weighted by
min-SNR-gamma (Hang et al. 2023).  Captions are replaced by the empty caption with probability
``--caption_dropout`` so the model also learns the unconditional prediction that classifier-free
guidance needs (Ho & Salimans 2022).

Example (the recipe that produced ``models/shapes-64``, see its README)::

    kernel-train-text-to-image --pretrained_model_name_or_path work/shapes-init --init_from_config \\
        --train_text_encoder --dataset shapes --output_dir models/shapes-64 ...
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from kernel_train import common
from kernel_train.datasets import load_dataset, pixel_tensor
from kernel_train.ema import EMAModel
from kernel_train.models import load_component, noise_table, read_index

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kernel-train-text-to-image", description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained_model_name_or_path", required=True, help="a pipeline folder (model_index.json)")
    p.add_argument("--init_from_config", action="store_true",
                   help="start the trained components from fresh weights built from their configs")
    p.add_argument("--train_text_encoder", action="store_true")
    p.add_argument("--train_lora", action="store_true", help="train LoRA adapters on the attention projections")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lora_alpha", type=float, default=None)
    p.add_argument("--caption_dropout", type=float, default=0.1)
    p.add_argument("--noise_offset", type=float, default=0.0)
    p.add_argument("--snr_gamma", type=float, default=None)
    p.add_argument("--prediction_type", default=None, choices=["epsilon", "v_prediction"])
    p.add_argument("--text_encoder_lr", type=float, default=None)
    p.add_argument("--save_dtype", default="fp32", choices=["fp32", "fp16"])
    common.add_common_args(p)
    args = p.parse_args(argv)
    common.check_common_args(args)
    if not 0.0 <= args.caption_dropout <= 1.0:
        raise ValueError(f"--caption_dropout must be in [0, 1], got {args.caption_dropout}")
    if args.train_lora and (args.train_text_encoder or args.init_from_config):
        raise ValueError("--train_lora adapts a pretrained UNet; it cannot be combined with "
                         "--train_text_encoder or --init_from_config")
    return args


def _add_lora(unet, rank: int, alpha: float | None):
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    unet.requires_grad_(False)
    unet = inject_adapter_in_model(config, unet)
    for name, param in unet.named_parameters():
        param.requires_grad_("lora_" in name)
    return unet


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """LoRA weights under Diffusers' key layout (``unet.<module path>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {f"unet.{k}": v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def lora_metadata(unet) -> dict[str, str]:
    """The safetensors header Diffusers writes for a trained LoRA: the peft config under ``lora_adapter_metadata``
    (``{"unet.r": ..., "unet.lora_alpha": ...}``), so loaders use the trained ``lora_alpha``, not ``alpha = rank``."""
    def plain(value):
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    config = {f"unet.{k}": plain(v) for k, v in unet.peft_config["default"].to_dict().items()}
    return {"format": "pt", "lora_adapter_metadata": json.dumps(config, indent=2, sort_keys=True, default=str)}


def encode_dataset(vae, pixels: torch.Tensor, device, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and std of every picture (the posterior is sampled anew each step)."""
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pixels), chunk):
            dist = vae.encode(pixels[start: start + chunk].to(device)).latent_dist
            means.append(dist.mean.cpu())
            stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = Path(args.pretrained_model_name_or_path)
    index = read_index(source)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = common.make_accelerator(args)
    device = accelerator.device
    log = common.MetricsLog(args.output_dir, accelerator.is_main_process)

    dataset = load_dataset(args.dataset, args.resolution, args.dataset_length, args.seed)
    tokenizer = load_component(source, index, "tokenizer")
    text_encoder = load_component(source, index, "text_encoder", args.init_from_config, seed=args.seed + 1)
    vae = load_component(source, index, "vae")
    unet = load_component(source, index, "unet", args.init_from_config, seed=args.seed)
    alphas_cumprod, sched_config = noise_table(source)
    prediction = args.prediction_type or sched_config.get("prediction_type", "epsilon")
    num_timesteps = len(alphas_cumprod)
    scaling = float(vae.config.get("scaling_factor", 1.0) if hasattr(vae.config, "get") else vae.config.scaling_factor)

    vae.requires_grad_(False).eval().to(device)
    text_encoder.requires_grad_(args.train_text_encoder).to(device)
    if not args.train_text_encoder:
        text_encoder.eval()
    if args.train_lora:
        unet = _add_lora(unet, args.rank, args.lora_alpha)
    unet.train().to(device)

    # Data: every caption tokenized once; latents encoded once (the VAE is frozen).
    pixels, texts = pixel_tensor(dataset, args.resolution)
    max_len = tokenizer.model_max_length

    def tokenize(captions):
        return tokenizer(captions, padding="max_length", max_length=max_len, truncation=True,
                         return_tensors="pt").input_ids

    caption_ids = tokenize(texts)
    empty_ids = tokenize([""])[0]
    lat_mean, lat_std = encode_dataset(vae, pixels, device)
    del pixels

    trained = [p for p in unet.parameters() if p.requires_grad]
    groups = [{"params": trained, "lr": args.learning_rate}]
    if args.train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()), "lr": args.text_encoder_lr or args.learning_rate})
    optimizer = torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay)
    lr_scheduler = common.make_lr_scheduler(optimizer, args.lr_scheduler, args.lr_warmup_steps, args.max_train_steps)
    ema_params = lambda: [p for g in groups for p in g["params"]]  # noqa: E731
    ema = EMAModel(ema_params(), decay=args.ema_decay) if args.use_ema else None

    if args.train_text_encoder:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(unet, text_encoder, optimizer, lr_scheduler)
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    models = [unet, text_encoder] if args.train_text_encoder else [unet]

    start = 0
    resume = common.find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if resume is not None:
        accelerator.load_state(str(resume))
        start = common.checkpoint_step(resume)
        accelerator.print(f"resumed from {resume} at step {start}")

    ab = alphas_cumprod.to(device)
    for step in range(start, args.max_train_steps):
        step_loss = 0.0
        for micro in range(args.gradient_accumulation_steps):
            with accelerator.accumulate(*models):
                g = common.step_generator(args.seed, step, micro)
                idx = common.batch_indices(len(caption_ids), args.train_batch_size, args.seed, step, micro,
                                           args.gradient_accumulation_steps)
                mean, std = lat_mean[idx], lat_std[idx]
                latents = (mean + std * torch.randn(mean.shape, generator=g)) * scaling
                noise = torch.randn(latents.shape, generator=g)
                if args.noise_offset:
                    noise = noise + args.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=g)
                t = torch.randint(0, num_timesteps, (len(idx),), generator=g)
                ids = caption_ids[idx].clone()
                drop = torch.rand(len(idx), generator=g) < args.caption_dropout
                ids[drop] = empty_ids
                latents, noise, t, ids = latents.to(device), noise.to(device), t.to(device), ids.to(device)

                a = ab[t].sqrt().view(-1, 1, 1, 1)
                s = (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
                noisy = a * latents + s * noise
                target = noise if prediction == "epsilon" else a * noise - s * latents
                with torch.set_grad_enabled(args.train_text_encoder):
                    hidden = text_encoder(ids)[0]
                pred = unet(noisy, t, hidden).sample
                if args.snr_gamma:
                    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
                    loss = (per * snr_weights(ab, t, args.snr_gamma, prediction)).mean()
                else:
                    loss = F.mse_loss(pred.float(), target.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(ema_params(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach().item() / args.gradient_accumulation_steps
        if ema is not None:
            ema.step(ema_params())
        done = step + 1
        if done % args.log_every == 0 or done == args.max_train_steps or done == start + 1:
            log.write(step=done, loss=step_loss, lr=lr_scheduler.get_last_lr()[0])
        if done % args.checkpointing_steps == 0 and accelerator.is_main_process:
            common.save_checkpoint(accelerator, args.output_dir, done, args.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        text_encoder = accelerator.unwrap_model(text_encoder)
        if ema is not None:
            ema.copy_to(ema_params())
        save_pipeline(args, source, unet, text_encoder)
    accelerator.end_training()
    return 0


def save_pipeline(args, source: Path, unet, text_encoder) -> None:
    out = Path(args.output_dir)
    if args.train_lora:
        from safetensors.torch import save_file

        tmp = out / f".{LORA_WEIGHTS}.tmp"
        save_file(lora_state_dict(unet), str(tmp), metadata=lora_metadata(unet))
        tmp.replace(out / LORA_WEIGHTS)
        return
    dtype = torch.float16 if args.save_dtype == "fp16" else torch.float32
    save_text_encoder = args.train_text_encoder or args.init_from_config
    for name in read_index(source):
        sub = source / name
        if name != "unet" and not (name == "text_encoder" and save_text_encoder):
            if sub.is_dir() and sub.resolve() != (out / name).resolve():
                shutil.copytree(sub, out / name, dirs_exist_ok=True)
    if (source / "model_index.json").resolve() != (out / "model_index.json").resolve():
        shutil.copy2(source / "model_index.json", out / "model_index.json")
    unet.to(dtype).save_pretrained(str(out / "unet"))
    if save_text_encoder:
        text_encoder.to(dtype).save_pretrained(str(out / "text_encoder"))
    (out / "training_args.json").write_text(json.dumps(vars(args), indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
