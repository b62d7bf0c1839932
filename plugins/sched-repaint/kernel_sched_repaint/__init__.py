"""RePaint inpainting (Lugmayr et al. 2022) for kernel."""

from kernel_sched_repaint.repaint import RePaintScheduler, RePaintSchedulerOutput

__all__ = ["RePaintScheduler", "RePaintSchedulerOutput"]
