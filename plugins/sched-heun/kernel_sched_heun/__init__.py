"""Heun's second-order sampler (Karras et al. 2022, Algorithm 1) for kernel."""

from kernel_sched_heun.heun import HeunDiscreteScheduler

__all__ = ["HeunDiscreteScheduler"]
