"""DDPM ancestral sampler (Ho et al. 2020) for kernel."""

from kernel_sched_ddpm.ddpm import DDPMScheduler

__all__ = ["DDPMScheduler"]
