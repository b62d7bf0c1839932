"""Samplers for score-based SDE models (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations") for kernel."""

from kernel_sched_score_sde.ve import ScoreSdeVeScheduler, SdeVeOutput
from kernel_sched_score_sde.vp import ScoreSdeVpScheduler

__all__ = ["ScoreSdeVeScheduler", "ScoreSdeVpScheduler", "SdeVeOutput"]
