"""Consistency-model sampling (Song et al. 2023, "Consistency Models", Algorithm 1) for kernel."""

from kernel_sched_cm.consistency_models import CMStochasticIterativeScheduler, CMStochasticIterativeSchedulerOutput

__all__ = ["CMStochasticIterativeScheduler", "CMStochasticIterativeSchedulerOutput"]
