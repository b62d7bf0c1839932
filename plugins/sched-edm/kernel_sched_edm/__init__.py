"""EDM schedulers (Karras et al. 2022): Euler with optional churn, and DPM-Solver++ in EDM form.

:class:`EDMPreconditioning` (the ``c_in``/``c_out``/``c_skip``/``c_noise`` preconditioning and
the sigma schedules) is public for other sigma-space schedulers to reuse.
"""

from .dpmsolver import EDMDPMSolverMultistepScheduler
from .euler import EDMEulerScheduler, EDMEulerSchedulerOutput
from .preconditioning import EDMPreconditioning

__all__ = ["EDMEulerScheduler", "EDMEulerSchedulerOutput", "EDMDPMSolverMultistepScheduler", "EDMPreconditioning"]
