"""DPM-Solver schedulers (multistep, singlestep, inverse) and the solver math other plugins reuse.

Public building blocks for other scheduler plugins:

* :mod:`kernel_sched_dpmsolver.solver_math`: exponential-integrator coefficients and the
  first/multistep/singlestep updates (Lu et al. 2022, 2022b);
* :class:`kernel_sched_dpmsolver.discrete.DiscreteSolverBase`: VP tables, grid construction,
  prediction conversion and ``add_noise`` for beta-schedule solvers;
* :class:`kernel_sched_dpmsolver.stepping.StepIndexMixin`: sync-free step bookkeeping.
"""

from .discrete import DiscreteSolverBase, dpm_timesteps, flow_shifted, to_data_prediction, to_noise_prediction
from .inverse import DPMSolverMultistepInverseScheduler
from .multistep import DPMSolverMultistepScheduler
from .singlestep import DPMSolverSinglestepScheduler
from .stepping import KARRAS_COMPATIBLES, StepIndexMixin

__all__ = [
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverMultistepInverseScheduler",
    "DiscreteSolverBase",
    "StepIndexMixin",
    "KARRAS_COMPATIBLES",
    "dpm_timesteps",
    "flow_shifted",
    "to_data_prediction",
    "to_noise_prediction",
]
