"""Pieces shared by the discrete-time scheduler plugins (DDPM, DDIM, PNDM, LMS, Euler, Heun, KDPM2, LCM, TCD).

Two families live on top of the noise-schedule math in :mod:`kernel.scheduling`:

* *alpha-table* schedulers (DDPM, DDIM, PNDM, LCM, TCD) step with ``alpha_bar(t)`` looked up by an
  integer timestep: :class:`AlphaTableMixin` builds the table, ``add_noise`` and ``get_velocity``;
  :func:`split_prediction` turns a model output into ``(x0, eps)`` for each ``prediction_type``.
* *sigma* (k-diffusion style, Karras et al. 2022) schedulers (Euler, Heun, LMS, KDPM2) work with
  ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` and a model input scaled by ``1 / sqrt(sigma^2 + 1)``:
  :class:`SigmaScheduler` builds the sigma schedule, ``init_noise_sigma``, ``scale_model_input``
  and ``add_noise``.

Both track where the denoising loop is with :class:`StepIndexMixin`, which the solver, EDM,
flow-matching and consistency schedulers share too (:class:`MirroredTimestepsMixin` keeps the
host copy of ``timesteps`` itself).  Every table stays on the CPU and is indexed with Python ints,
so ``step`` never reads a device tensor: a timestep handed over as a CPU tensor or a number is
looked up in a host copy of the schedule, an element of the device-resident ``timesteps`` is found
by its storage offset, and any other accelerator timestep is taken to be the schedule entry at the
current step index (pipelines that start mid-schedule call ``set_begin_index`` first, as with
Diffusers).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kernel.config import init_keys
from kernel.scheduling import (
    SchedulerMixin,
    broadcast_to,
    check_choice,
    check_sigma_options,
    convert_sigmas,
    float_spaced_timesteps,
    make_betas,
    rescale_zero_terminal_snr,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
)

#: The Diffusers scheduler names that share the alpha/sigma training schedule and can be
#: built from each other's configs (Diffusers' ``KarrasDiffusionSchedulers``).
KARRAS_COMPATIBLES: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)

THREE_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ---------------------------------------------------------------------------- host reads
def host_scalar(value: Any) -> float | int | None:
    """``value`` as a Python number when that needs no device synchronisation, else ``None``.

    Numbers, numpy scalars and CPU tensors are read; a tensor on an accelerator (or on the meta
    device) is not, because reading it would stall the denoising loop.
    """
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            return None
        if value.numel() != 1:
            raise ValueError(f"timestep must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"timestep must be a scalar, got an array of shape {value.shape}")
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"timestep must be a number or a scalar tensor, got {type(value).__name__}")


def host_int(value: Any) -> int:
    """``value`` as a Python int for schedulers whose timestep decides control flow.

    A number or CPU tensor is read for free; an accelerator tensor is copied once (a sync): pass
    CPU timesteps (``set_timesteps`` without ``device``) to keep such a loop sync-free.
    """
    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
        value = value.detach().to("cpu")
    return int(host_scalar(value))


def as_host_array(values: Any) -> np.ndarray:
    """A numpy copy of a schedule given as list, array or tensor (tensors are copied to the CPU once)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def match_index(schedule: np.ndarray, value: float | int, *, first: bool = False) -> int:
    """Position of ``value`` in ``schedule``; with repeats, the second one unless ``first``.

    Taking the second of two equal timesteps is the convention of the second-order solvers
    (their schedules repeat each inner timestep) and of image-to-image loops that start at a
    timestep that also appears earlier.
    """
    hits = np.flatnonzero(schedule == np.asarray(value, dtype=schedule.dtype))
    if hits.size == 0:
        raise ValueError(
            f"timestep {value} is not one of the scheduler's timesteps {schedule.tolist()}; "
            "pass one of scheduler.timesteps (call set_timesteps first)"
        )
    return int(hits[0] if first or hits.size == 1 else hits[1])


def position_in(view: torch.Tensor, table: torch.Tensor) -> int | None:
    """Index of a one-element ``view`` inside the 1-D ``table`` when it shares its storage, else ``None``.

    The normal loop ``for t in scheduler.timesteps`` hands ``step`` views of the device-resident
    schedule; their storage offset says where they are without copying a value to the host.
    """
    if not isinstance(table, torch.Tensor) or view.numel() != 1 or table.ndim != 1 or table.numel() == 0:
        return None
    if view.dtype != table.dtype or view.device != table.device:
        return None
    try:
        if view.untyped_storage().data_ptr() != table.untyped_storage().data_ptr():
            return None
    except (RuntimeError, NotImplementedError):  # tensors without storage (functional tensors)
        return None
    offset = view.storage_offset() - table.storage_offset()
    stride = table.stride(0)
    if stride <= 0 or offset < 0 or offset % stride:
        return None
    pos = offset // stride
    return pos if pos < table.shape[0] else None


class StepIndexMixin:
    """``step_index`` / ``begin_index`` bookkeeping over a host copy of ``timesteps``.

    Subclasses keep ``self._schedule_host`` (numpy) in step with ``self.timesteps`` (or use
    :class:`MirroredTimestepsMixin`, which does it for them).  A timestep handed over as a number
    or CPU tensor is looked up in the host copy; one that is an element of the device-resident
    ``timesteps`` is found by its storage offset.  Any other accelerator timestep is, with
    ``_read_device_timesteps`` false (the default), taken to be the schedule entry at the current
    step index; with it true it is copied to the host once.
    """

    _step_index: int | None = None
    _begin_index: int | None = None
    _schedule_host: np.ndarray
    #: what a timestep missing from the schedule gives: ``"error"`` or ``"last"`` (the last index,
    #: as the DPM-Solver family does)
    _missing_timestep = "error"
    #: whether a device timestep that is not an element of ``timesteps`` may be copied to the host
    _read_device_timesteps = False

    @property
    def step_index(self) -> int | None:
        """Position in ``timesteps`` of the next ``step`` (``None`` before the first call)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First index of the loop when it does not start at ``timesteps[0]`` (set by pipelines)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at ``timesteps[begin_index]`` (image-to-image, inpainting)."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"begin_index must be a non-negative int, got {begin_index!r}")
        self._begin_index = int(begin_index)

    def _reset_step_index(self) -> None:
        self._step_index = None
        self._begin_index = None

    def _host_timestep(self, timestep: Any) -> float | int | None:
        """``timestep`` as a Python number without a device sync, or ``None`` if that is impossible."""
        value = host_scalar(timestep)
        if value is not None:
            return value
        pos = position_in(timestep, getattr(self, "timesteps", None))
        if pos is not None:
            return self._schedule_host[pos].item()
        if self._read_device_timesteps:  # one copy of a device timestep we did not hand out
            return host_scalar(timestep.detach().to("cpu"))
        return None

    def _index_of(self, value: float | int, schedule: np.ndarray | None = None) -> int:
        """Index of ``value`` in the schedule (second match where it repeats), per ``_missing_timestep``."""
        schedule = self._schedule_host if schedule is None else schedule
        if self._missing_timestep == "last" and not np.any(schedule == np.asarray(value, dtype=schedule.dtype)):
            return len(schedule) - 1
        return match_index(schedule, value)

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Any = None) -> int:
        """Index of ``timestep`` in the schedule (the second match where the schedule repeats it)."""
        schedule = None if schedule_timesteps is None else as_host_array(schedule_timesteps)
        value = self._host_timestep(timestep)
        if value is None:
            raise ValueError("index_for_timestep needs a CPU timestep; move it with .cpu() first")
        return self._index_of(value, schedule)

    def _position(self) -> int:
        if self._step_index is not None:
            return self._step_index
        return self._begin_index or 0

    def _locate(self, timestep: Any) -> tuple[int | float, int | None]:
        """``(value, position)`` of a timestep handed to ``step``, without reading device memory.

        A number or CPU tensor is looked up (first match; position ``None`` when the schedule does
        not hold it).  An accelerator tensor is taken to be the schedule entry at the current
        position: ``begin_index`` at first, then one further per ``step``.
        """
        value = host_scalar(timestep)
        if value is None:
            position = self._position()
            if position >= len(self._schedule_host):
                raise ValueError(
                    f"step called {position + 1} times on a schedule of {len(self._schedule_host)} timesteps; "
                    "call set_timesteps again (or pass the timestep as a Python number)"
                )
            return self._schedule_host[position].item(), position
        hits = np.flatnonzero(self._schedule_host == value)
        return value, (int(hits[0]) if hits.size else None)

    def _advance(self, position: int | None) -> None:
        self._step_index = (position if position is not None else self._position()) + 1

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        value = self._host_timestep(timestep)
        # An unknown accelerator timestep cannot be read without a sync: the loop starts at the beginning.
        self._step_index = 0 if value is None else self._index_of(value)

    def _step_indices_for(self, timesteps: Any) -> list[int]:
        """Step indices of a batch of timesteps (``add_noise``): ``begin_index`` once set, else looked up."""
        if self._begin_index is not None:
            n = torch.as_tensor(timesteps).reshape(-1).shape[0]
            return [self._step_index if self._step_index is not None else self._begin_index] * n
        host = torch.as_tensor(timesteps).detach().to("cpu").reshape(-1)
        return [self._index_of(host_scalar(t)) for t in host]


class MirroredTimestepsMixin(StepIndexMixin):
    """:class:`StepIndexMixin` whose ``timesteps`` attribute keeps the host copy up to date itself."""

    _read_device_timesteps = True

    @property
    def timesteps(self) -> torch.Tensor:
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value: Any) -> None:
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        self._store_timesteps(value.detach().to("cpu"), None)
        self._timesteps = value

    def _store_timesteps(self, host: torch.Tensor, device: Any) -> None:
        """Publish the CPU tensor ``host`` as ``timesteps`` on ``device`` (no copy back from the device)."""
        self._schedule_host = host.numpy()
        self._timesteps = host.to(device) if device is not None else host


# ---------------------------------------------------------------------------- alpha tables
def split_prediction(
    prediction_type: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    beta_prod_t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` implied by the model output (Ho et al. 2020 eq. 15; Salimans & Ho 2022 for ``v``)."""
    sqrt_a, sqrt_b = alpha_prod_t**0.5, beta_prod_t**0.5
    if prediction_type == "epsilon":
        return (sample - sqrt_b * model_output) / sqrt_a, model_output
    if prediction_type == "sample":
        return model_output, (sample - sqrt_a * model_output) / sqrt_b
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_b * model_output, sqrt_a * model_output + sqrt_b * sample
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; accepted values: epsilon, sample, v_prediction")


def build_alpha_tables(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Any,
    rescale_betas_zero_snr: bool = False,
    accepted: Sequence[str] = THREE_BETA_SCHEDULES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(betas, alphas, alphas_cumprod)`` as float32 CPU tensors for a Diffusers-style beta config."""
    betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, accepted)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


def alpha_tables_for(
    config: Any, accepted: Sequence[str] = THREE_BETA_SCHEDULES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`build_alpha_tables` for a scheduler config (``rescale_betas_zero_snr`` where it has one)."""
    return build_alpha_tables(
        config.num_train_timesteps,
        config.beta_start,
        config.beta_end,
        config.beta_schedule,
        config.trained_betas,
        bool(config.get("rescale_betas_zero_snr", False)),
        accepted,
    )


class AlphaTableMixin:
    """The ``betas`` / ``alphas`` / ``alphas_cumprod`` tables (CPU, float32) and what they give."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor

    def _build_alpha_tables(self, config: Any, accepted: Sequence[str] = THREE_BETA_SCHEDULES) -> None:
        self.betas, self.alphas, self.alphas_cumprod = alpha_tables_for(config, accepted)

    def _alpha_bar_pair(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        picked = table[timesteps.to(like.device)]
        return broadcast_to(picked**0.5, like), broadcast_to((1 - picked) ** 0.5, like)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (Ho et al. 2020, eq. 4)."""
        signal, noise_level = self._alpha_bar_pair(torch.as_tensor(timesteps), original_samples)
        return signal * original_samples + noise_level * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The ``v`` target ``sqrt(a_t) eps - sqrt(1 - a_t) x0`` (Salimans & Ho 2022, section 4)."""
        signal, noise_level = self._alpha_bar_pair(torch.as_tensor(timesteps), sample)
        return signal * noise - noise_level * sample


# ---------------------------------------------------------------------------- sigma schedulers
class SigmaScheduler(StepIndexMixin, SchedulerMixin):
    """Base of the k-diffusion style schedulers: ``x = x0 + sigma * eps`` with a scaled model input.

    Subclasses call :meth:`_build_sigma_tables` in ``__init__`` and build their inference schedule
    with :meth:`_spaced_sigmas`, then publish it with :meth:`_publish`.
    """

    #: whether the Karras spacing honours ``config.sigma_min``/``sigma_max`` (LMS ignores them)
    _karras_uses_config_range = True
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    num_inference_steps: int | None = None

    def _build_sigma_tables(self, config: Any, accepted: Sequence[str] = THREE_BETA_SCHEDULES) -> None:
        check_choice("timestep_spacing", config.timestep_spacing, ("linspace", "leading", "trailing"))
        self.betas, self.alphas, self.alphas_cumprod = alpha_tables_for(config, accepted)
        if config.get("rescale_betas_zero_snr", False):
            # sigma would be infinite at the zero-SNR step; a tiny alpha_bar keeps it finite.
            self.alphas_cumprod[-1] = 2**-24

    def _setup_sigma_tables(self, prediction_types: Sequence[str], accepted: Sequence[str] = THREE_BETA_SCHEDULES) -> None:
        """Check ``prediction_type`` and the sigma-spacing flags this class takes, then build the tables."""
        check_choice("prediction_type", self.config.prediction_type, prediction_types)
        check_sigma_options(*(bool(self._option(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")))
        self._build_sigma_tables(self.config, accepted)

    def _train_sigmas(self) -> np.ndarray:
        return sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def _option(self, key: str, default: Any = False) -> Any:
        """A config value this class takes (keys kept from another scheduler's config are ignored)."""
        return self.config[key] if key in init_keys(type(self)) and key in self.config else default

    def _spaced_sigmas(
        self,
        num_inference_steps: int,
        num_train_timesteps: int | None = None,
        timesteps: Any = None,
        log_linear: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(timesteps, sigmas, log_sigmas)`` before the final sigma is appended.

        Timesteps are spaced per ``timestep_spacing`` (or given), sigmas interpolated from the
        training sigmas and, with Karras / exponential / beta spacing, respaced with their
        timesteps recovered by log-sigma interpolation.
        """
        cfg = self.config
        if timesteps is not None:
            steps = np.asarray(as_host_array(timesteps), dtype=np.float32)
        else:
            steps = float_spaced_timesteps(
                cfg.timestep_spacing, num_inference_steps, num_train_timesteps or cfg.num_train_timesteps, cfg.steps_offset
            )
        train_sigmas = self._train_sigmas()
        log_sigmas = np.log(train_sigmas)
        if log_linear:
            # Evenly spaced in log sigma from the largest training sigma down; n + 1 values, as Diffusers builds it.
            grid = torch.linspace(float(log_sigmas[-1]), float(log_sigmas[0]), num_inference_steps + 1)
            sigmas = grid.exp().numpy()
        else:
            sigmas = np.interp(steps, np.arange(len(train_sigmas)), train_sigmas)
        options = {k: bool(self._option(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")}
        if any(options.values()):
            # Like Diffusers, a sigma range kept in the config (even from another scheduler's) bounds the respacing.
            lo, hi = cfg.get("sigma_min"), cfg.get("sigma_max")
            if options["use_karras_sigmas"] and not self._karras_uses_config_range:
                lo = hi = None
            sigmas = convert_sigmas(sigmas, num_inference_steps, sigma_min=lo, sigma_max=hi, **options)
            steps = sigma_to_t(sigmas, log_sigmas)
        return steps, sigmas, log_sigmas

    def _publish(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device: Any) -> None:
        """Store the schedule: ``sigmas`` stay on the CPU, ``timesteps`` go to ``device`` for the loop."""
        self.sigmas = sigmas.to("cpu")
        self._schedule_host = timesteps.detach().cpu().numpy()
        self.timesteps = timesteps.to(device) if device is not None else timesteps
        self._reset_step_index()

    def _check_sigma_set_timesteps(self, num_inference_steps: Any, timesteps: Any = None, sigmas: Any = None) -> int:
        """Shared argument checks of ``set_timesteps``; returns the number of steps."""
        from kernel.scheduling import validate_custom_schedule, validate_num_inference_steps

        given = [name for name, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None]
        validate_custom_schedule(timesteps, sigmas)
        if given and num_inference_steps is not None:
            raise ValueError(f"pass either num_inference_steps or {given[0]} to set_timesteps, not both")
        if not given and num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps (or custom timesteps/sigmas)")
        if given:
            for option in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if timesteps is not None and self._option(option):
                    raise ValueError(f"custom timesteps cannot be combined with {option}=True")
            return len(timesteps) if timesteps is not None else len(sigmas) - 1
        return validate_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Scale of the starting noise: ``sigma_max`` (or ``sqrt(sigma_max^2 + 1)`` for leading spacing)."""
        top = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return top
        return (top**2 + 1) ** 0.5

    def _input_sigma(self) -> torch.Tensor:
        return self.sigmas[self._step_index]

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Divide by ``sqrt(sigma^2 + 1)`` so the model sees unit-variance input (Karras et al. 2022, Table 1)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self._input_sigma()
        self.is_scale_input_called = True
        return sample / ((sigma**2 + 1) ** 0.5)

    def _steps_for_add_noise(self, timesteps: torch.Tensor) -> list[int] | torch.Tensor:
        if self._begin_index is not None:
            index = self._step_index if self._step_index is not None else self._begin_index
            return [index] * timesteps.shape[0]
        values = [host_scalar(t) for t in timesteps] if timesteps.device.type == "cpu" else None
        if values is not None:
            return [match_index(self._schedule_host, v) for v in values]
        # Accelerator timesteps: find each one's index on the device (same second-match rule).
        schedule = torch.as_tensor(self._schedule_host, device=timesteps.device)
        hits = schedule[None, :] == timesteps.reshape(-1, 1).to(schedule.dtype)
        running = hits.cumsum(dim=1)
        wanted = torch.where(hits.sum(dim=1, keepdim=True) > 1, 2, 1)
        return torch.argmax(((running == wanted) & hits).int(), dim=1)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x = x0 + sigma(t) * noise`` with ``sigma`` looked up by each timestep's schedule position."""
        timesteps = torch.as_tensor(timesteps)
        if timesteps.ndim == 0:
            timesteps = timesteps.reshape(1)
        indices = self._steps_for_add_noise(timesteps)
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        if isinstance(indices, torch.Tensor):
            indices = indices.to(original_samples.device)
        sigma = broadcast_to(sigmas[indices], original_samples)
        return original_samples + noise * sigma

    def _x0_from_sigma(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoised estimate for ``epsilon`` / ``v_prediction`` / ``sample`` outputs at noise level ``sigma``."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        return model_output

    def __len__(self) -> int:
        return self.config.num_train_timesteps
