"""Pseudo numerical methods for diffusion models (Liu et al. 2022) for kernel."""

from kernel_sched_pndm.ipndm import IPNDMScheduler
from kernel_sched_pndm.pndm import PNDMScheduler

__all__ = ["PNDMScheduler", "IPNDMScheduler"]
