"""Stochastic sampler of Karras et al. 2022 (Algorithm 2) for variance-exploding models, for kernel."""

from kernel_sched_karras_ve.karras_ve import KarrasVeOutput, KarrasVeScheduler

__all__ = ["KarrasVeOutput", "KarrasVeScheduler"]
