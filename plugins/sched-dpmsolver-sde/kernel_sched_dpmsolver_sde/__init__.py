"""DPM-Solver SDE scheduler and the Brownian-tree noise sampler other stochastic solvers reuse."""

from .brownian import BatchedBrownianTree, BrownianTreeNoiseSampler
from .sde import DPMSolverSDEScheduler, DPMSolverSDESchedulerOutput

__all__ = ["DPMSolverSDEScheduler", "DPMSolverSDESchedulerOutput", "BrownianTreeNoiseSampler", "BatchedBrownianTree"]
