"""Sampling for OpenAI's consistency decoder (the DALL-E 3 latent decoder).

The decoder is a consistency model (Song et al. 2023) trained on a cosine-beta VP process
(Nichol & Dhariwal 2021) with 1024 steps.  In VE terms ``sigma_t = sqrt(1/alpha_bar_t - 1)``,
and the network is preconditioned as in EDM (Karras et al. 2022, Table 1), with the VP input
``x_t = sqrt(alpha_bar_t) (x0 + sigma_t noise)`` folded into the scalings:

    c_in  = 1 / (sqrt(alpha_bar_t) sqrt(sigma_t^2 + sigma_data^2))
    c_skip = sigma_data^2 / (sqrt(alpha_bar_t) (sigma_t^2 + sigma_data^2))
    c_out = sigma_t sigma_data / sqrt(sigma_t^2 + sigma_data^2)

The released decoder uses two steps, at t = 1008 and t = 512: denoise, re-noise to 512 with
the forward process, denoise again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin, randn_tensor
from kernel_sched_common import BeginIndexMixin, betas_for_alpha_bar, host_int

#: The timesteps the released decoder was distilled for.
DECODER_TIMESTEPS = (1008, 512)


@dataclasses.dataclass
class ConsistencyDecoderSchedulerOutput(BaseOutput):
    """prev_sample: the re-noised sample for the next step, or the decoded image after the last."""

    prev_sample: torch.Tensor


class ConsistencyDecoderScheduler(BeginIndexMixin, SchedulerMixin):
    """Consistency-decoder sampler; config keys as Diffusers'.

    Each step is located by its timestep value, so ``set_begin_index`` is only stored.
    """

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1024, sigma_data: float = 0.5) -> None:
        if num_train_timesteps <= DECODER_TIMESTEPS[0]:
            raise ValueError(
                f"num_train_timesteps must exceed {DECODER_TIMESTEPS[0]} (the decoder's first timestep), "
                f"got {num_train_timesteps}"
            )
        alphas_cumprod = torch.cumprod(1.0 - betas_for_alpha_bar(num_train_timesteps), dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - alphas_cumprod)
        sigmas = torch.sqrt(1.0 / alphas_cumprod - 1)
        inv_sqrt_ab = torch.sqrt(1.0 / alphas_cumprod)
        self.c_skip = inv_sqrt_ab * sigma_data**2 / (sigmas**2 + sigma_data**2)
        self.c_out = sigmas * sigma_data / (sigmas**2 + sigma_data**2) ** 0.5
        self.c_in = inv_sqrt_ab / (sigmas**2 + sigma_data**2) ** 0.5
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self._host_steps: tuple[int, ...] = ()

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Only the two-step schedule the decoder was trained for (t = 1008, 512) is available."""
        if num_inference_steps != 2:
            raise ValueError(
                f"ConsistencyDecoderScheduler supports num_inference_steps=2 only (timesteps {DECODER_TIMESTEPS}), "
                f"got {num_inference_steps!r}"
            )
        self.num_inference_steps = 2
        self._host_steps = DECODER_TIMESTEPS
        self._begin_index = None
        self.timesteps = torch.tensor(DECODER_TIMESTEPS, dtype=torch.long, device=device)

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Std of the starting noise: ``sqrt(1 - alpha_bar)`` at the first timestep."""
        self._require_timesteps()
        return self.sqrt_one_minus_alphas_cumprod[self._host_steps[0]]

    def _position(self, timestep: Any) -> int:
        t = host_int(timestep)
        if t not in self._host_steps:
            raise ValueError(f"timestep={t} is not one of scheduler.timesteps {list(self._host_steps)}")
        return self._host_steps.index(t)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Multiply by ``c_in(t)``."""
        self._require_timesteps()
        return sample * float(self.c_in[self._host_steps[self._position(timestep)]])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> ConsistencyDecoderSchedulerOutput | tuple:
        """Consistency denoise ``c_out F + c_skip x``; re-noise to the next timestep unless this is the last."""
        self._require_timesteps()
        i = self._position(timestep)
        t = self._host_steps[i]
        x0 = float(self.c_out[t]) * model_output + float(self.c_skip[t]) * sample
        if i == len(self._host_steps) - 1:
            prev_sample = x0
        else:
            nxt = self._host_steps[i + 1]
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            prev_sample = (float(self.sqrt_alphas_cumprod[nxt]) * x0
                           + float(self.sqrt_one_minus_alphas_cumprod[nxt]) * noise)
        if not return_dict:
            return (prev_sample,)
        return ConsistencyDecoderSchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """VP forward process ``sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise``."""
        idx = timesteps.to("cpu").long().reshape(-1)
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        a = self.sqrt_alphas_cumprod[idx].to(original_samples.device, original_samples.dtype).reshape(shape)
        s = self.sqrt_one_minus_alphas_cumprod[idx].to(original_samples.device, original_samples.dtype).reshape(shape)
        return a * original_samples + s * noise
