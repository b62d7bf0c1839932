"""Euler schedulers (Karras et al. 2022, Algorithm 2) for kernel."""

from kernel_sched_euler.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

__all__ = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"]
