"""Flow-matching schedulers (Lipman et al. 2023; Esser et al. 2024, SD3) for kernel.

``FlowMatchEulerDiscreteScheduler`` and ``FlowMatchHeunDiscreteScheduler`` integrate the
rectified-flow ODE ``dx/dsigma = v`` on ``x_sigma = (1 - sigma) x0 + sigma noise``;
``calculate_shift`` gives the resolution-dependent ``mu`` used by Flux pipelines.
"""

from kernel_sched_flow_match.common import calculate_shift
from kernel_sched_flow_match.euler import FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerOutput
from kernel_sched_flow_match.heun import FlowMatchHeunDiscreteScheduler, FlowMatchHeunDiscreteSchedulerOutput

__all__ = [
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchEulerDiscreteSchedulerOutput",
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchHeunDiscreteSchedulerOutput",
    "calculate_shift",
]
