"""Step bookkeeping of the solver schedulers: the shared sync-free step index.

Diffusers' rule: the first call to ``step`` (or ``scale_model_input``) finds its timestep in
``timesteps`` (the second match if it occurs twice, so image-to-image that starts mid-schedule
does not skip a sigma); later calls just advance ``step_index``; ``set_begin_index`` skips the
search.  The mechanism lives in :mod:`kernel_sched_common.step_index`; this module keeps the names the
solver plugins have always imported.
"""

from __future__ import annotations

from kernel_sched_common import KARRAS_COMPATIBLES, MirroredTimestepsMixin, position_in

_position_in = position_in


class StepIndexMixin(MirroredTimestepsMixin):
    """The kernel's step index with the DPM-Solver convention: a timestep missing from the
    schedule maps to the last step (set ``_missing_timestep = "error"`` to reject it instead)."""

    _missing_timestep = "last"


__all__ = ["KARRAS_COMPATIBLES", "StepIndexMixin"]
