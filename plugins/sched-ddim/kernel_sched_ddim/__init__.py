"""DDIM sampler and DDIM inversion (Song et al. 2021) for kernel."""

from kernel_sched_ddim.ddim import DDIMInverseScheduler, DDIMScheduler

__all__ = ["DDIMScheduler", "DDIMInverseScheduler"]
