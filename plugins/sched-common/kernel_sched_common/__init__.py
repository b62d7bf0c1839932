"""Scheduler math shared by the scheduler plugins (the ``kernel-sched-common`` distribution).

* :mod:`~kernel_sched_common.schedules` -- beta, timestep and sigma schedules, thresholding, argument checks;
* :mod:`~kernel_sched_common.step_index` -- sync-free ``step_index`` / ``begin_index`` bookkeeping;
* :mod:`~kernel_sched_common.discrete` -- alpha tables and the k-diffusion style :class:`SigmaScheduler` base.

The base class and step outputs stay in the kernel (:mod:`kernel.scheduling`); a third-party
scheduler may use these helpers or not.
"""

from kernel_sched_common.discrete import (
    KARRAS_COMPATIBLES,
    THREE_BETA_SCHEDULES,
    AlphaTableMixin,
    SigmaScheduler,
    alpha_tables_for,
    build_alpha_tables,
    split_prediction,
)
from kernel_sched_common.schedules import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    beta_sigmas,
    betas_for_alpha_bar,
    broadcast_to,
    check_choice,
    check_sigma_options,
    convert_sigmas,
    exponential_sigmas,
    float_spaced_timesteps,
    karras_sigmas,
    make_betas,
    rescale_zero_terminal_snr,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
    threshold_sample,
    validate_custom_schedule,
    validate_num_inference_steps,
)
from kernel_sched_common.step_index import (
    BeginIndexMixin,
    MirroredTimestepsMixin,
    StepIndexMixin,
    as_host_array,
    check_begin_index,
    host_int,
    host_scalar,
    match_index,
    position_in,
)

__all__ = [
    "alpha_tables_for", "AlphaTableMixin", "as_host_array", "BeginIndexMixin", "BETA_SCHEDULES",
    "beta_sigmas", "betas_for_alpha_bar", "broadcast_to", "build_alpha_tables", "check_begin_index",
    "check_choice", "check_sigma_options", "convert_sigmas", "exponential_sigmas", "float_spaced_timesteps",
    "host_int", "host_scalar", "KARRAS_COMPATIBLES", "karras_sigmas", "make_betas", "match_index",
    "MirroredTimestepsMixin", "position_in", "PREDICTION_TYPES", "rescale_zero_terminal_snr", "sigma_to_t",
    "sigmas_from_alphas_cumprod", "SigmaScheduler", "spaced_timesteps", "split_prediction", "StepIndexMixin",
    "THREE_BETA_SCHEDULES", "threshold_sample", "TIMESTEP_SPACINGS", "validate_custom_schedule",
    "validate_num_inference_steps",
]
