"""The unCLIP scheduler (Ramesh et al. 2022, DALL-E 2; Karlo) for kernel."""

from kernel_sched_unclip.unclip import UnCLIPScheduler, UnCLIPSchedulerOutput

__all__ = ["UnCLIPScheduler", "UnCLIPSchedulerOutput"]
