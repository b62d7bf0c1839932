"""Trajectory consistency distillation (Zheng et al. 2024) sampling for kernel."""

from kernel_sched_tcd.tcd import TCDScheduler, TCDSchedulerOutput

__all__ = ["TCDScheduler", "TCDSchedulerOutput"]
