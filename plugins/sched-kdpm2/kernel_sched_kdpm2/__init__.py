"""DPM-Solver-2 samplers in the k-diffusion form (Karras et al. 2022, Algorithm 2 footnote) for kernel."""

from kernel_sched_kdpm2.kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler

__all__ = ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"]
