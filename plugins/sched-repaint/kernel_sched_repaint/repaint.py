"""RePaint: inpainting with an unconditional DDPM (Lugmayr et al. 2022, Algorithm 1).

Each reverse step combines two samples of ``x_{t-1}``: the known region is the original
image noised to ``t-1`` by the forward process, the unknown region is a DDIM-style step
(Song et al. 2021, eq. 12, with ``eta``) from the model's prediction.  The schedule goes
back and forth: after every ``jump_length`` steps it jumps ``jump_length`` steps back up
(``undo_step`` re-noises with the forward transitions), ``jump_n_sample - 1`` times per
position, which harmonises the two regions (the paper's resampling, section 4.2).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin, randn_tensor
from kernel_sched_common import BeginIndexMixin, host_int, make_betas, validate_num_inference_steps

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


@dataclasses.dataclass
class RePaintSchedulerOutput(BaseOutput):
    """prev_sample: the merged ``x_{t-1}``; pred_original_sample: the predicted ``x0``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def repaint_schedule(num_inference_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The back-and-forth step sequence (in inference-step units) of RePaint's resampling."""
    jumps = {j: jump_n_sample - 1 for j in range(0, num_inference_steps - jump_length, jump_length)}
    seq: list[int] = []
    t = num_inference_steps
    while t >= 1:
        t -= 1
        seq.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                seq.append(t)
    return seq


class RePaintScheduler(BeginIndexMixin, SchedulerMixin):
    """RePaint scheduler; config keys as Diffusers'.

    Each step is located by its timestep value, so ``set_begin_index`` is only stored.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        eta: float = 0.0,
        trained_betas: Sequence[float] | np.ndarray | None = None,
        clip_sample: bool = True,
    ) -> None:
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                accepted=BETA_SCHEDULES)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.final_alpha_cumprod = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.eta = eta

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        device: str | torch.device | None = None,
    ) -> None:
        """RePaint's resampling schedule (``jump_length``, ``jump_n_sample`` as in the paper)."""
        num_inference_steps = validate_num_inference_steps(num_inference_steps)
        for name, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        n = min(self.config.num_train_timesteps, num_inference_steps)
        self.num_inference_steps = n
        self._begin_index = None
        seq = np.array(repaint_schedule(n, jump_length, jump_n_sample)) * (self.config.num_train_timesteps // n)
        self.timesteps = torch.from_numpy(seq).to(device)

    def _stride(self) -> int:
        self._require_timesteps()
        return self.config.num_train_timesteps // self.num_inference_steps

    def _alpha_bar_prev(self, t: int) -> torch.Tensor:
        prev = t - self._stride()
        return self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod

    def _get_variance(self, t: int) -> torch.Tensor:
        """DDIM's ``sigma_t^2 / eta^2`` for the jump ``t -> t - stride`` (Song et al. 2021, eq. 16)."""
        a_t, a_prev = self.alphas_cumprod[t], self._alpha_bar_prev(t)
        return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        original_image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> RePaintSchedulerOutput | tuple:
        """One reverse step; ``mask`` is 1 where ``original_image`` is known and kept."""
        self._require_timesteps()
        t = host_int(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"timestep={t} is outside [0, {self.config.num_train_timesteps})")
        a_t, a_prev = self.alphas_cumprod[t], self._alpha_bar_prev(t)
        x0 = (sample - (1 - a_t) ** 0.5 * model_output) / a_t**0.5
        if self.config.clip_sample:
            x0 = torch.clamp(x0, -1, 1)
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        std = self.eta * self._get_variance(t) ** 0.5
        # Unknown region: DDIM step (eq. 12 of Song et al. 2021) from the prediction.
        unknown = float(a_prev**0.5) * x0 + float((1 - a_prev - std**2) ** 0.5) * model_output
        if t > 0 and self.eta > 0:
            unknown = unknown + float(std) * noise
        # Known region: the original image pushed through the forward process to t - stride.
        known = float(a_prev**0.5) * original_image + float((1 - a_prev) ** 0.5) * noise
        prev_sample = mask * known + (1.0 - mask) * unknown
        if not return_dict:
            return (prev_sample, x0)
        return RePaintSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def undo_step(self, sample: torch.Tensor, timestep: int | torch.Tensor, generator: torch.Generator | None = None):
        """Go back up ``stride`` forward steps: ``x <- sqrt(1 - beta) x + sqrt(beta) noise`` for each."""
        stride = self._stride()
        t = host_int(timestep)
        if not (0 <= t and t + stride <= self.config.num_train_timesteps):
            raise ValueError(f"undo_step timestep={t} is outside [0, {self.config.num_train_timesteps - stride}]")
        for i in range(stride):
            beta = self.betas[t + i]
            if sample.device.type == "mps":
                noise = randn_tensor(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            else:
                noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            sample = float((1 - beta) ** 0.5) * sample + float(beta**0.5) * noise
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("RePaint samples only; train with DDPMScheduler.add_noise")
