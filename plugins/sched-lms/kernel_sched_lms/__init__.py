"""Linear multistep sampler over sigmas (k-diffusion ``sample_lms``) for kernel."""

from kernel_sched_lms.lms import LMSDiscreteScheduler

__all__ = ["LMSDiscreteScheduler"]
