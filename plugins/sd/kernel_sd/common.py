"""Pieces every Stable Diffusion pipeline shares: schedules, guidance, VAE encoding, validation."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from kernel.scheduling import randn_tensor

__all__ = [
    "batch_size_of",
    "check_callback_inputs",
    "check_denoising_window",
    "check_embeds",
    "check_generators",
    "check_size",
    "check_strength",
    "encode_latents",
    "guidance_embedding",
    "rescale_noise_cfg",
    "retrieve_timesteps",
    "step_kwargs",
    "strength_timesteps",
    "cutoff_timestep",
    "randn_tensor",
]


# ---------------------------------------------------------------------------- schedules
def retrieve_timesteps(scheduler, num_inference_steps: int | None = None, device=None,
                       timesteps: Sequence[int] | None = None, sigmas: Sequence[float] | None = None,
                       **kwargs: Any) -> tuple[torch.Tensor, int]:
    """Set the scheduler's schedule (by step count, or custom ``timesteps``/``sigmas``) and return it.

    Returns ``(scheduler.timesteps, number of steps)``.
    """
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass at most one of timesteps and sigmas")
    accepted = set(inspect.signature(scheduler.set_timesteps).parameters)
    for name, value in (("timesteps", timesteps), ("sigmas", sigmas)):
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"{type(scheduler).__name__}.set_timesteps does not take custom {name}; "
                             "use a scheduler that does, or num_inference_steps")
        scheduler.set_timesteps(**{name: value}, device=device, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    if num_inference_steps is None or int(num_inference_steps) < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, num_inference_steps


def _set_begin(scheduler, index: int) -> None:
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(index)


def strength_timesteps(scheduler, num_inference_steps: int, strength: float,
                       denoising_start: float | None = None) -> tuple[torch.Tensor, int]:
    """The tail of the schedule that image-to-image runs (SDEdit, Meng et al. 2021).

    ``strength`` keeps the last ``int(steps * strength)`` steps; ``denoising_start`` (a fraction of the
    training timesteps, for a refiner taking over from a base model) overrides it and keeps the steps
    whose timestep is below the cut-off.
    """
    order = scheduler.order
    if denoising_start is None:
        kept = min(int(num_inference_steps * strength), num_inference_steps)
        start = max(num_inference_steps - kept, 0)
        _set_begin(scheduler, start * order)
        return scheduler.timesteps[start * order:], num_inference_steps - start
    cutoff = cutoff_timestep(scheduler, denoising_start)
    steps = int((scheduler.timesteps < cutoff).sum().item())
    if order == 2 and steps % 2 == 0:
        # A second-order scheduler's timesteps come in pairs; starting mid-pair would skip a
        # first-order step, so take one more to begin on a full step.
        steps += 1
    start = len(scheduler.timesteps) - steps
    _set_begin(scheduler, start)
    return scheduler.timesteps[start:], steps


def cutoff_timestep(scheduler, fraction: float) -> int:
    """The discrete timestep at which ``fraction`` of the denoising is done."""
    n = scheduler.config.num_train_timesteps
    return int(round(n - fraction * n))


def truncate_for_denoising_end(scheduler, timesteps: torch.Tensor, denoising_end: float | None) -> tuple[torch.Tensor, int | None]:
    """Keep the timesteps at or above the ``denoising_end`` cut-off (``None`` count = unchanged)."""
    if not _is_fraction(denoising_end):
        return timesteps, None
    cutoff = cutoff_timestep(scheduler, denoising_end)
    count = sum(1 for t in timesteps if t >= cutoff)
    return timesteps[:count], count


def _is_fraction(value: Any) -> bool:
    return isinstance(value, float) and 0 < value < 1


def step_kwargs(scheduler, generator, eta: float) -> dict:
    """``eta``/``generator`` for schedulers whose ``step`` takes them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    out = {}
    if "eta" in accepted:
        out["eta"] = eta
    if "generator" in accepted:
        out["generator"] = generator
    return out


# ---------------------------------------------------------------------------- guidance
def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", section 3.4): match the guided prediction's std to the text prediction's, then blend."""
    dims = list(range(1, noise_pred_text.ndim))
    rescaled = noise_cfg * (noise_pred_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def guidance_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale for guidance-distilled UNets (``time_cond_proj_dim``;
    Meng et al. 2023, "On Distillation of Guided Diffusion Models")."""
    w = w * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


# ---------------------------------------------------------------------------- VAE
def latents_of(encoding: Any, generator=None, sample_mode: str = "sample") -> torch.Tensor:
    """Latents from a VAE ``encode`` output: a posterior sample (or its mode), or plain latents."""
    dist = getattr(encoding, "latent_dist", None)
    if dist is not None:
        return dist.sample(generator) if sample_mode == "sample" else dist.mode()
    if hasattr(encoding, "latents"):
        return encoding.latents
    raise AttributeError(f"cannot read latents from {type(encoding).__name__}")


def encode_latents(vae, images: torch.Tensor, generator) -> torch.Tensor:
    """Sample latents of ``images`` (unscaled); with a list of generators, one per image."""
    if isinstance(generator, list):
        return torch.cat([latents_of(vae.encode(images[i:i + 1]), generator[i]) for i in range(images.shape[0])])
    return latents_of(vae.encode(images), generator)


# ---------------------------------------------------------------------------- validation
def batch_size_of(prompt, prompt_embeds) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def check_size(height: int, width: int, factor: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % factor:
            raise ValueError(f"{name} must be a positive multiple of {factor} (the VAE's downsampling factor), got {value!r}")


def check_strength(strength: Any) -> None:
    if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0.0, 1.0], got {strength!r}")


def check_generators(generator, batch_size: int) -> None:
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"generator is a list of {len(generator)} generators but the effective batch size "
            f"(prompts x num_images_per_prompt) is {batch_size}; pass one generator or one per image"
        )


def check_callback_inputs(names, accepted: Sequence[str]) -> None:
    if names is None:
        return
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs has unknown names {unknown}; accepted: {list(accepted)}")


def check_embeds(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, *, suffix: str = "",
                 prompt_2=None, negative_prompt_2=None) -> None:
    """The prompt/embeddings rules every SD pipeline shares."""
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass either prompt or prompt_embeds, not both")
    if prompt_2 is not None and prompt_embeds is not None:
        raise ValueError("pass either prompt_2 or prompt_embeds, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError("pass prompt (str or list of str) or prompt_embeds")
    for name, value in (("prompt", prompt), ("prompt_2", prompt_2)):
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError(f"{name} must be a str or a list of str, got {type(value).__name__}")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
    if negative_prompt_2 is not None and negative_prompt_embeds is not None:
        raise ValueError("pass either negative_prompt_2 or negative_prompt_embeds, not both")
    if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(
            f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
            f"{tuple(negative_prompt_embeds.shape)} must have the same shape"
        )
    if isinstance(negative_prompt, list):
        batch = batch_size_of(prompt, prompt_embeds)
        if len(negative_prompt) != batch:
            raise ValueError(
                f"negative_prompt has {len(negative_prompt)} entries but the prompt batch size is {batch}; "
                "give one negative_prompt per prompt or a single str"
            )


def check_denoising_window(denoising_start: Any, denoising_end: Any) -> None:
    for name, value in (("denoising_start", denoising_start), ("denoising_end", denoising_end)):
        if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    if _is_fraction(denoising_start) and _is_fraction(denoising_end) and denoising_start >= denoising_end:
        raise ValueError(f"denoising_start ({denoising_start}) must be smaller than denoising_end ({denoising_end})")


def check_steps_left(num_inference_steps: int, strength: Any) -> None:
    if num_inference_steps < 1:
        raise ValueError(
            f"strength={strength} leaves {num_inference_steps} denoising steps; raise strength or "
            "num_inference_steps so at least one step runs"
        )


def check_image_mask_sizes(image: Any, mask_image: Any) -> None:
    """``mask_image`` must cover the same pixels as ``image`` (PIL sizes or tensor/array spatial sizes)."""
    def size_of(x):
        if isinstance(x, list):
            x = x[0] if x else None
        if x is None:
            return None
        if hasattr(x, "size") and not callable(x.size):
            return tuple(x.size)[::-1]  # PIL: (w, h) -> (h, w)
        if isinstance(x, torch.Tensor):
            if x.ndim == 4 and x.shape[1] == 4:
                return None  # latents
            return tuple(x.shape[-2:])
        if hasattr(x, "shape"):
            return tuple(x.shape[-3:-1]) if x.ndim >= 3 and x.shape[-1] in (1, 3, 4) else tuple(x.shape[-2:])
        return None

    a, b = size_of(image), size_of(mask_image)
    if a is not None and b is not None and a != b:
        raise ValueError(f"mask_image size {b} (height, width) must equal image size {a}")
