"""Latent consistency models (Luo et al. 2023) multistep sampling for kernel."""

from kernel_sched_lcm.consistency import ConsistencyScheduleMixin
from kernel_sched_lcm.lcm import LCMScheduler, LCMSchedulerOutput

__all__ = ["LCMScheduler", "LCMSchedulerOutput", "ConsistencyScheduleMixin"]
