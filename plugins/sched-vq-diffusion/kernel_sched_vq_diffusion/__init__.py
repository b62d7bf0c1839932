"""Discrete mask-and-replace diffusion over VQ tokens (Gu et al. 2022, VQ-Diffusion) for kernel."""

from kernel_sched_vq_diffusion.vq_diffusion import (
    VQDiffusionScheduler,
    VQDiffusionSchedulerOutput,
    alpha_schedules,
    gamma_schedules,
    gumbel_noised,
    index_to_log_onehot,
)

__all__ = [
    "VQDiffusionScheduler",
    "VQDiffusionSchedulerOutput",
    "alpha_schedules",
    "gamma_schedules",
    "gumbel_noised",
    "index_to_log_onehot",
]
