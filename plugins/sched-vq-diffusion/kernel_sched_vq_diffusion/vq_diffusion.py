"""VQ-Diffusion's reverse process (Gu et al. 2022, "Vector Quantized Diffusion Model for
Text-to-Image Synthesis", section 3.2 and appendix A).

Tokens take ``K - 1`` codebook values plus a ``[MASK]`` class (the last index).  One forward
step keeps a token with probability ``a_t + b_t``, replaces it uniformly (``b_t`` per class)
or masks it (``c_t``); masked tokens stay masked.  The cumulative products ``abar, bbar, cbar``
have closed forms (the paper's eq. 8), driven by the linear ``alpha_cum`` / ``gamma_cum``
schedules below.

The network predicts ``log p(x0 | x_t)`` over the ``K - 1`` real classes; the posterior
``p(x_{t-1} | x_t) = sum_x0 q(x_{t-1} | x_t, x0) p(x0 | x_t)`` (eq. 11) is computed in log space:
normalise ``p(x0 | x_t) / q(x_t | x0)`` over x0, push it through ``q(x_{t-1} | x0)``, multiply
by ``q(x_t | x_{t-1})`` and restore the normaliser.  Sampling uses the Gumbel-max trick.
All tables are float32 logs computed in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin
from kernel_sched_common import BeginIndexMixin, host_int, validate_num_inference_steps


@dataclasses.dataclass
class VQDiffusionSchedulerOutput(BaseOutput):
    """prev_sample: token indices at the previous step, ``[B, num_latent_pixels]``."""

    prev_sample: torch.LongTensor


def index_to_log_onehot(x: torch.LongTensor, num_classes: int) -> torch.Tensor:
    """Token indices ``[B, L]`` -> log one-hot ``[B, num_classes, L]`` (zeros clamped to log 1e-30)."""
    onehot = F.one_hot(x, num_classes).permute(0, 2, 1)
    return torch.log(onehot.float().clamp(min=1e-30))


def gumbel_noised(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Add Gumbel(0, 1) noise, so that ``argmax`` draws a category from ``softmax(logits)``."""
    u = torch.rand(logits.shape, device=logits.device, generator=generator)
    return -torch.log(-torch.log(u + 1e-30) + 1e-30) + logits


def alpha_schedules(
    num_diffusion_timesteps: int, alpha_cum_start: float = 0.99999, alpha_cum_end: float = 0.000009
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step ``a_t`` and cumulative ``abar_t`` (linear in t), with ``abar`` padded by a final 1."""
    cum = np.arange(0, num_diffusion_timesteps) / (num_diffusion_timesteps - 1) * (
        alpha_cum_end - alpha_cum_start
    ) + alpha_cum_start
    padded = np.concatenate(([1], cum))
    step = padded[1:] / padded[:-1]
    return step, np.concatenate((padded[1:], [1]))


def gamma_schedules(
    num_diffusion_timesteps: int, gamma_cum_start: float = 0.000009, gamma_cum_end: float = 0.99999
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step mask probability ``c_t`` and cumulative ``cbar_t`` (linear in t), padded by a final 0."""
    cum = np.arange(0, num_diffusion_timesteps) / (num_diffusion_timesteps - 1) * (
        gamma_cum_end - gamma_cum_start
    ) + gamma_cum_start
    padded = np.concatenate(([0], cum))
    keep = 1 - padded
    step = 1 - keep[1:] / keep[:-1]
    return step, np.concatenate((padded[1:], [0]))


class VQDiffusionScheduler(BeginIndexMixin, SchedulerMixin):
    """VQ-Diffusion sampler over discrete latent tokens; config keys as Diffusers'."""

    order = 1
    #: None of the Gaussian-noise scheduler contracts describe a categorical sampler (read by kernel_contracts).
    _known_contract_failures = {
        name: "categorical (VQ-Diffusion) scheduler: samples are token indices and model outputs "
        "log-probabilities, none of the Gaussian-noise contracts describe it"
        for name in ("timestep_count", "timestep_range", "timestep_order", "step_shape_dtype", "begin_index",
                     "step_half_precision", "step_deterministic", "step_no_mutation", "add_noise",
                     "config_round_trip", "save_load_round_trip", "exact_model_convergence")
    }

    @register_to_config
    def __init__(
        self,
        num_vec_classes: int,
        num_train_timesteps: int = 100,
        alpha_cum_start: float = 0.99999,
        alpha_cum_end: float = 0.000009,
        gamma_cum_start: float = 0.000009,
        gamma_cum_end: float = 0.99999,
    ) -> None:
        if isinstance(num_vec_classes, bool) or not isinstance(num_vec_classes, (int, np.integer)) or num_vec_classes < 2:
            raise ValueError(f"num_vec_classes must be an int >= 2 (codebook size + the mask class), got {num_vec_classes!r}")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
        self.num_embed = int(num_vec_classes)
        self.mask_class = self.num_embed - 1  # by convention the mask token is the last class
        at, att = alpha_schedules(num_train_timesteps, alpha_cum_start, alpha_cum_end)
        ct, ctt = gamma_schedules(num_train_timesteps, gamma_cum_start, gamma_cum_end)
        real = self.num_embed - 1
        bt, btt = (1 - at - ct) / real, (1 - att - ctt) / real

        def logs(values: np.ndarray) -> torch.Tensor:
            return torch.log(torch.tensor(values.astype("float64"))).float()

        self.log_at, self.log_bt, self.log_ct = logs(at), logs(bt), logs(ct)
        self.log_cumprod_at, self.log_cumprod_bt, self.log_cumprod_ct = logs(att), logs(btt), logs(ctt)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())

    _TABLES = ("log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct")

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Timesteps ``n-1, ..., 0`` (the model is trained for one reverse step per timestep)."""
        n = validate_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        self.num_inference_steps = n
        self._begin_index = None
        self.timesteps = torch.from_numpy(np.arange(0, n)[::-1].copy()).to(device)
        for name in self._TABLES:
            setattr(self, name, getattr(self, name).to(device))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.LongTensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> VQDiffusionSchedulerOutput | tuple:
        """Draw ``x_{t-1}`` from ``p(x_{t-1} | x_t)`` given ``model_output = log p(x0 | x_t)`` ``[B, K-1, L]``."""
        t = host_int(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"timestep={t} is outside [0, {self.config.num_train_timesteps})")
        if model_output.ndim != 3 or model_output.shape[1] != self.num_embed - 1:
            raise ValueError(
                f"model_output must be log-probabilities shaped [batch, {self.num_embed - 1}, pixels], "
                f"got {tuple(model_output.shape)}"
            )
        log_probs = model_output if t == 0 else self.q_posterior(model_output, sample, t)
        prev = gumbel_noised(log_probs, generator).argmax(dim=1)
        if not return_dict:
            return (prev,)
        return VQDiffusionSchedulerOutput(prev_sample=prev)

    def q_posterior(self, log_p_x_0: torch.Tensor, x_t: torch.LongTensor, t: int | torch.Tensor) -> torch.Tensor:
        """``log p(x_{t-1} | x_t)`` ``[B, K, L]`` from the model's ``log p(x0 | x_t)`` (eq. 11, in log space)."""
        t = host_int(t)
        log_onehot = index_to_log_onehot(x_t, self.num_embed)
        log_q_xt_given_x0 = self.log_Q_t_transitioning_to_known_class(
            t=t, x_t=x_t, log_onehot_x_t=log_onehot, cumulative=True
        )
        log_q_xt_given_prev = self.log_Q_t_transitioning_to_known_class(
            t=t, x_t=x_t, log_onehot_x_t=log_onehot, cumulative=False
        )
        ratio = log_p_x_0 - log_q_xt_given_x0
        norm = torch.logsumexp(ratio, dim=1, keepdim=True)
        pushed = self.apply_cumulative_transitions(ratio - norm, t - 1)
        return pushed + log_q_xt_given_prev + norm

    def log_Q_t_transitioning_to_known_class(
        self, *, t: int | torch.Tensor, x_t: torch.LongTensor, log_onehot_x_t: torch.Tensor, cumulative: bool
    ) -> torch.Tensor:
        """Log-probabilities of reaching the observed ``x_t`` from each class.

        ``cumulative=True``: ``log q(x_t | x0 = k)`` for the ``K - 1`` real classes k (``[B, K-1, L]``);
        ``cumulative=False``: ``log q(x_t | x_{t-1} = k)`` for all ``K`` classes including the mask.
        """
        t = host_int(t)
        if cumulative:
            a, b, c = self.log_cumprod_at[t], self.log_cumprod_bt[t], self.log_cumprod_ct[t]
        else:
            a, b, c = self.log_at[t], self.log_bt[t], self.log_ct[t]
        from_mask = log_onehot_x_t[:, -1:, :]  # a masked x_{t-1} stays masked
        log_q = (log_onehot_x_t[:, :-1, :] + a).logaddexp(b)
        masked = (x_t == self.mask_class).unsqueeze(1).expand(-1, self.num_embed - 1, -1)
        log_q = torch.where(masked, c.to(log_q.dtype), log_q)
        if not cumulative:
            log_q = torch.cat((log_q, from_mask), dim=1)
        return log_q

    def apply_cumulative_transitions(self, q: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Push a (log) distribution over x0 through ``q(x_t | x0)``: ``[B, K-1, L] -> [B, K, L]``."""
        t = host_int(t)
        a, b, c = self.log_cumprod_at[t], self.log_cumprod_bt[t], self.log_cumprod_ct[t]
        q = (q + a).logaddexp(b)
        return torch.cat((q, c.expand(q.shape[0], 1, q.shape[2])), dim=1)

    def add_noise(self, original_samples: torch.LongTensor, noise: Any, timesteps: Any) -> torch.Tensor:
        raise NotImplementedError("VQ-Diffusion tokens are corrupted by sampling q(x_t | x0), not by adding noise")
