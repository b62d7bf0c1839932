"""The latent space an autoencoder hands to a denoiser: spatial factor and normalisation.

Denoisers are trained on normalised VAE latents.  Three conventions exist, all read from the
autoencoder's own config:

* per-channel statistics (``latents_mean`` / ``latents_std``, e.g. the SDXL VAE when set):
  ``x = (z - mean) * scaling_factor / std``;
* a shift (``shift_factor``, SD3 and Flux): ``x = (z - shift_factor) * scaling_factor``;
* a plain scale (SD 1.x/2.x): ``x = z * scaling_factor``.

Pipelines call :meth:`normalize_latents` after ``encode`` and :meth:`denormalize_latents` before
``decode`` instead of reading config keys, so every autoencoder states its own rule.
"""

from __future__ import annotations

import torch


class LatentSpaceMixin:
    """``spatial_compression_ratio`` plus latent (de)normalisation for a 2-D image autoencoder."""

    #: How many pixels one latent cell covers along each side; set by the model's ``__init__``.
    spatial_compression_ratio: int

    def _channel_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        mean, std = getattr(self.config, "latents_mean", None), getattr(self.config, "latents_std", None)
        if mean is None or std is None:
            return None
        shape = (1, -1) + (1,) * (like.ndim - 2)
        as_tensor = lambda v: torch.tensor(v).view(shape).to(like.device, like.dtype)  # noqa: E731
        return as_tensor(mean), as_tensor(std)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Encoder latents ``z`` -> the space the denoiser works in."""
        scale = self.config.scaling_factor
        stats = self._channel_stats(latents)
        if stats is not None:
            return (latents - stats[0]) * scale / stats[1]
        shift = getattr(self.config, "shift_factor", None)
        if shift:
            return (latents - shift) * scale
        return latents * scale

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_latents`: denoiser latents -> what ``decode`` takes."""
        scale = self.config.scaling_factor
        stats = self._channel_stats(latents)
        if stats is not None:
            return latents * stats[1] / scale + stats[0]
        shift = getattr(self.config, "shift_factor", None)
        if shift:
            return latents / scale + shift
        return latents / scale
