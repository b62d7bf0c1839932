"""Helpers every diffusion pipeline shares, whatever its denoiser (UNet or transformer).

Schedules (custom timesteps/sigmas, image-to-image strength, refiner cut-offs), VAE latents, and the
argument checks that raise ``ValueError`` naming the argument.  The tasks (:mod:`kernel.tasks`) and
the family plugins import these; family-specific rules (prompt encoders, pooled embeddings) stay there.
"""

from __future__ import annotations

import inspect
import logging
import numbers
from typing import Any, Mapping, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_TYPES",
    "batch_size_of",
    "check_callback_inputs",
    "check_denoising_window",
    "check_generators",
    "check_inpaint_inputs",
    "check_output_type",
    "check_pooled",
    "check_prompts",
    "check_size",
    "check_steps_left",
    "check_strength",
    "check_unsupported",
    "cutoff_timestep",
    "effective_batch",
    "encode_latents",
    "is_open_fraction",
    "latents_of",
    "repeat_to_batch",
    "spatial_size",
    "retrieve_timesteps",
    "step_kwargs",
    "strength_timesteps",
    "truncate_for_denoising_end",
]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _is_positive_int(value: Any) -> bool:
    # bool is an int subclass but never a count; numpy integers are fine.
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def is_open_fraction(value: Any) -> bool:
    """Whether ``value`` is a float strictly between 0 and 1 (a usable ``denoising_start``/``end``)."""
    return isinstance(value, float) and 0 < value < 1


# ---------------------------------------------------------------------------- schedules
def retrieve_timesteps(scheduler, num_inference_steps: int | None = None, device=None,
                       timesteps: Sequence[int] | None = None, sigmas: Sequence[float] | None = None,
                       **kwargs: Any) -> tuple[torch.Tensor, int]:
    """Set the scheduler's schedule and return ``(scheduler.timesteps, number of steps)``.

    The schedule comes from custom ``timesteps`` or ``sigmas`` (at most one; the scheduler's
    ``set_timesteps`` must take it) or else from ``num_inference_steps`` (a positive int).
    Extra keyword arguments (``mu`` for resolution-shifted flow matching, ...) go to ``set_timesteps``.
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
    if not _is_positive_int(num_inference_steps):
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, num_inference_steps


def cutoff_timestep(scheduler, fraction: float) -> int:
    """The discrete timestep at which ``fraction`` of the denoising is done (``num_train_timesteps`` scale)."""
    n = scheduler.config.num_train_timesteps
    return int(round(n - fraction * n))


def strength_timesteps(scheduler, num_inference_steps: int, strength: float, denoising_start: float | None = None,
                       *, floor_kept: bool = True) -> tuple[torch.Tensor, int]:
    """The tail of the schedule that image-to-image runs (SDEdit, Meng et al. 2021, arXiv:2108.01073).

    Sets the scheduler's begin index to match and returns ``(timesteps, number of steps)``.

    ``strength`` keeps about ``num_inference_steps * strength`` steps.  The two rounding rules of the
    reference pipelines differ: ``floor_kept=True`` (UNet pipelines) keeps ``int(steps * strength)``
    steps; ``floor_kept=False`` (SD3, Flux, PixArt) floors the start index instead, keeping
    ``steps - int(steps - steps * strength)``.

    ``denoising_start`` (a fraction of the training timesteps, for a refiner taking over from a base
    model) overrides ``strength`` and keeps the steps whose timestep is below the cut-off.
    """
    order = scheduler.order
    if denoising_start is None:
        if floor_kept:
            kept = min(int(num_inference_steps * strength), num_inference_steps)
            start = max(num_inference_steps - kept, 0)
        else:
            start = int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))
        scheduler.set_begin_index(start * order)
        return scheduler.timesteps[start * order:], num_inference_steps - start
    cutoff = cutoff_timestep(scheduler, denoising_start)
    steps = int((scheduler.timesteps < cutoff).sum().item())
    if order == 2 and steps % 2 == 0:
        # A second-order scheduler's timesteps come in pairs; starting mid-pair would skip a
        # first-order step, so take one more to begin on a full step.
        steps += 1
    start = len(scheduler.timesteps) - steps
    scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], steps


def truncate_for_denoising_end(scheduler, timesteps: torch.Tensor,
                               denoising_end: float | None) -> tuple[torch.Tensor, int | None]:
    """Keep the timesteps at or above the ``denoising_end`` cut-off (a base model handing over to a
    refiner); the count is ``None`` when ``denoising_end`` is not a fraction in (0, 1) and nothing changed."""
    if not is_open_fraction(denoising_end):
        return timesteps, None
    cutoff = cutoff_timestep(scheduler, denoising_end)
    count = sum(1 for t in timesteps if t >= cutoff)
    return timesteps[:count], count


def step_kwargs(scheduler, generator, eta: float) -> dict:
    """``eta`` and ``generator`` for the schedulers whose ``step`` takes them (DDIM's eta, ancestral noise)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    out = {}
    if "eta" in accepted:
        out["eta"] = eta
    if "generator" in accepted:
        out["generator"] = generator
    return out


# ---------------------------------------------------------------------------- VAE
def latents_of(encoding: Any, generator=None, sample_mode: str = "sample") -> torch.Tensor:
    """Latents from a VAE ``encode`` output.

    A posterior (``latent_dist``) gives a sample (or its mode with ``sample_mode="argmax"``); an output
    with plain ``latents`` (a deterministic encoder such as a tiny autoencoder) gives those; any other
    indexable output (a ``return_dict=False`` tuple) is read through its first item.
    """
    dist = getattr(encoding, "latent_dist", None)
    if dist is None and hasattr(encoding, "latents"):
        return encoding.latents
    if dist is None and not isinstance(encoding, torch.Tensor) and hasattr(encoding, "__getitem__"):
        dist = encoding[0]
    if isinstance(dist, torch.Tensor):
        return dist
    if dist is not None and hasattr(dist, "sample"):
        return dist.sample(generator) if sample_mode == "sample" else dist.mode()
    raise AttributeError(f"cannot read latents from {type(encoding).__name__}")


def encode_latents(vae, images: torch.Tensor, generator, sample_mode: str = "sample") -> torch.Tensor:
    """Latents of ``images`` ``(N, C, H, W)``, unscaled; with a list of generators, one per image."""
    if isinstance(generator, list):
        return torch.cat([latents_of(vae.encode(images[i:i + 1]), generator[i], sample_mode)
                          for i in range(images.shape[0])])
    return latents_of(vae.encode(images), generator, sample_mode)


def repeat_to_batch(x: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    """Tile ``x`` (whole-batch copies along dim 0) up to ``batch_size`` rows; ``what`` names it in errors."""
    if x.shape[0] >= batch_size:
        return x
    if batch_size % x.shape[0]:
        raise ValueError(f"cannot spread {x.shape[0]} {what} over a batch of {batch_size}; give 1, or a divisor of it")
    return x.repeat(batch_size // x.shape[0], *([1] * (x.ndim - 1)))


# ---------------------------------------------------------------------------- argument checks
def batch_size_of(prompt, prompt_embeds) -> int:
    """Number of prompts: 1 for a str, the list's length, else ``prompt_embeds``' batch size."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def tokenize(tokenizer, prompts: list[str], max_length: int | None = None):
    """``prompts`` padded and truncated to ``max_length`` tokens (the tokenizer's own length by default), as
    tensors with the attention mask; a warning is logged when a prompt had to be cut."""
    length = max_length or tokenizer.model_max_length
    inputs = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    if tokenizer(prompts, padding="longest", return_tensors="pt").input_ids.shape[-1] > length:
        logger.warning("prompts longer than %d tokens were truncated", length)
    return inputs


def effective_batch(prompt, prompt_embeds, num_images_per_prompt: Any) -> int:
    """Prompts x ``num_images_per_prompt``: the batch of latents, after checking the count is a positive int."""
    if not _is_positive_int(num_images_per_prompt):
        raise ValueError(f"num_images_per_prompt must be a positive int, got {num_images_per_prompt!r}")
    return batch_size_of(prompt, prompt_embeds) * num_images_per_prompt


def check_prompts(prompts: Mapping[str, Any], prompt_embeds: torch.Tensor | None,
                  negatives: Mapping[str, Any] | None = None,
                  negative_prompt_embeds: torch.Tensor | None = None) -> None:
    """Text and embeddings are exclusive; each text is a str or list of str; ``prompt`` or ``prompt_embeds``
    is given; positive and negative embeddings have equal shapes.

    ``prompts``/``negatives`` map argument names (``prompt``, ``prompt_2``, ...) to their values.
    """
    for name, value in prompts.items():
        if value is not None and prompt_embeds is not None:
            raise ValueError(f"pass either {name} or prompt_embeds, not both")
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError(f"{name} must be a str or a list of str, got {type(value).__name__}")
    if prompts.get("prompt") is None and prompt_embeds is None:
        raise ValueError("pass prompt (str or list of str) or prompt_embeds")
    for name, value in (negatives or {}).items():
        if value is not None and negative_prompt_embeds is not None:
            raise ValueError(f"pass either {name} or negative_prompt_embeds, not both")
    if prompt_embeds is not None and negative_prompt_embeds is not None and \
            prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                         f"{tuple(negative_prompt_embeds.shape)} must have the same shape")


def check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, pooled_dim: int | None = None) -> None:
    """Sequence and pooled embeddings come together, with matching batch sizes (and width ``pooled_dim``)."""
    pairs = (("prompt_embeds", prompt_embeds, "pooled_prompt_embeds", pooled_prompt_embeds),
             ("negative_prompt_embeds", negative_prompt_embeds, "negative_pooled_prompt_embeds",
              negative_pooled_prompt_embeds))
    for seq_name, seq, pool_name, pool in pairs:
        if seq is not None and pool is None:
            raise ValueError(f"{seq_name} needs {pool_name} from the same text encoders; pass both")
        if seq is None or pool is None:
            continue
        if pool.ndim != 2 or pool.shape[0] != seq.shape[0]:
            raise ValueError(f"{pool_name} {tuple(pool.shape)} does not match {seq_name} {tuple(seq.shape)}: "
                             f"expected shape ({seq.shape[0]}, pooled width)")
        if pooled_dim is not None and pool.shape[1] != pooled_dim:
            raise ValueError(f"{pool_name} has width {pool.shape[1]} but the transformer's pooled_projection_dim "
                             f"is {pooled_dim}")


def check_size(height: Any, width: Any, factor: int, why: str = "the VAE's downsampling factor") -> None:
    """``height`` and ``width`` are positive ints divisible by ``factor`` (``why`` says where it comes from)."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise ValueError(f"{name} must be a positive multiple of {factor} ({why}), got {value!r}")


def check_strength(strength: Any) -> None:
    """``strength`` is a number in [0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0.0, 1.0], got {strength!r}")


def check_steps_left(num_inference_steps: int, strength: Any) -> None:
    """After strength trimming, at least one denoising step must remain."""
    if num_inference_steps < 1:
        raise ValueError(
            f"strength={strength} leaves no denoising step ({num_inference_steps} after trimming); raise "
            "strength or num_inference_steps so at least one step runs"
        )


def check_denoising_window(denoising_start: Any, denoising_end: Any) -> None:
    """``denoising_start``/``denoising_end`` are fractions in [0, 1], and start comes before end."""
    for name, value in (("denoising_start", denoising_start), ("denoising_end", denoising_end)):
        if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    if is_open_fraction(denoising_start) and is_open_fraction(denoising_end) and denoising_start >= denoising_end:
        raise ValueError(f"denoising_start ({denoising_start}) must be smaller than denoising_end ({denoising_end})")


def check_generators(generator, batch_size: int) -> None:
    """A list of generators has one per image of the effective batch."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"generator is a list of {len(generator)} generators but the effective batch size "
                         f"(prompts x num_images_per_prompt) is {batch_size}; pass one generator or one per image")


def check_callback_inputs(names: Sequence[str] | None, accepted: Sequence[str]) -> None:
    """Every name in ``callback_on_step_end_tensor_inputs`` is one the pipeline can hand the callback."""
    if names is None:
        return
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs has unknown names {unknown}; accepted: {list(accepted)}")


def check_output_type(output_type: Any, accepted: Sequence[str] = OUTPUT_TYPES) -> None:
    """``output_type`` is one of ``accepted``."""
    if output_type not in accepted:
        raise ValueError(f"output_type={output_type!r} is not supported; use one of {list(accepted)}")


def check_unsupported(owner: str, **arguments: Any) -> None:
    """Arguments Diffusers takes that ``owner`` does not implement yet: refuse them when given,
    rather than accept and silently drop them."""
    given = [k for k, v in arguments.items() if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not supported yet by {owner}; "
                         "leave it unset")


def spatial_size(x: Any) -> tuple[int, int] | None:
    """``(H, W)`` of an image or mask input (PIL, ``[B,] [C,] H, W`` tensor, ``[B,] H, W [, C]`` array, or a
    list of them), or None when it cannot tell."""
    import numpy as np
    import PIL.Image

    if isinstance(x, (list, tuple)):
        return spatial_size(x[0]) if len(x) else None
    if isinstance(x, PIL.Image.Image):
        return x.height, x.width
    if isinstance(x, torch.Tensor) and x.ndim >= 2:
        return tuple(x.shape[-2:])
    if isinstance(x, np.ndarray) and x.ndim >= 2:
        # Arrays keep channels last; a trailing 1/3/4 axis on a >= 3-d array is channels.
        return tuple(x.shape[-3:-1]) if x.ndim >= 3 and x.shape[-1] in (1, 3, 4) else tuple(x.shape[-2:])
    return None


def check_inpaint_inputs(image: Any, mask_image: Any, padding_mask_crop: Any, output_type: Any,
                         latent_channels: int | None = None) -> None:
    """Both inputs given, of the same size (unless ``image`` is already latents), and ``padding_mask_crop``
    (a non-negative int) only with single PIL inputs and PIL output."""
    import PIL.Image

    if image is None or mask_image is None:
        raise ValueError("inpainting needs both image and mask_image (PIL images, arrays, tensors or lists)")
    is_latents = isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[1] == latent_channels
    a, b = spatial_size(image), spatial_size(mask_image)
    if not is_latents and a is not None and b is not None and a != b:
        raise ValueError(f"mask_image is {b[0]}x{b[1]} (HxW) but image is {a[0]}x{a[1]}; pass a mask_image of the "
                         "same size as image")
    if padding_mask_crop is None:
        return
    if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, int) or padding_mask_crop < 0:
        raise ValueError(f"padding_mask_crop must be None or a non-negative int (pixels), got {padding_mask_crop!r}")
    for name, value in (("image", image), ("mask_image", mask_image)):
        if not isinstance(value, PIL.Image.Image):
            raise ValueError(f"padding_mask_crop needs {name} as one PIL image, got {type(value).__name__}")
    if output_type != "pil":
        raise ValueError(f"padding_mask_crop pastes the result back into the PIL image, so output_type must be "
                         f"'pil', got {output_type!r}")
