"""Base of the k-diffusion samplers that evaluate the model at points planned in advance.

Diffusers' scheduler API calls the model once per entry of ``timesteps`` and hands each output
to ``step``.  A multi-stage solver (DPM++ 2S, DPM-Solver-2/3) evaluates the model at
intermediate noise levels too, so ``set_timesteps`` lays out *every* evaluation: ``timesteps``
and ``sigmas`` hold one entry per model call (``sigmas`` has the final noise level appended),
and ``_stages`` says what each call is for.  ``step`` turns the model output into the
denoised estimate ``D(x; sigma)`` (Karras et al. 2022 notation) and lets the subclass either
return the next stage's input or finish a step.

All per-step coefficients are Python floats computed on the host from the plan, so ``step``
never reads device memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kernel.scheduling import SchedulerOutputWithX0, randn_tensor
from kernel_sched_common import KARRAS_COMPATIBLES, SigmaScheduler, check_begin_index, sigma_to_t

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` splitting a step into a deterministic part and fresh noise.

    ``sigma_up = min(sigma_to, eta * sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2))``
    and ``sigma_down = sqrt(sigma_to^2 - sigma_up^2)``, so that the marginal at ``sigma_to`` is
    right (the ancestral sampling of Ho et al. 2020 in the VE parameterisation; eta = 1 matches it).
    """
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(max(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2, 0.0)))
    return math.sqrt(max(sigma_to**2 - up**2, 0.0)), up


class PlannedSigmaScheduler(SigmaScheduler):
    """Sigma-based scheduler whose model evaluations are all laid out by ``set_timesteps``."""

    _compatibles = KARRAS_COMPATIBLES

    def _setup(self) -> None:
        eta = getattr(self.config, "eta", 0.0)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self._setup_sigma_tables(PREDICTION_TYPES)
        self.num_inference_steps = None
        self.is_scale_input_called = False
        self._eval_sigmas: list[float] = []
        self._stages: list[Any] = []
        self._final_sigma = 0.0
        train = self._train_sigmas()
        self._publish(torch.from_numpy(np.arange(len(train) - 1, -1, -1, dtype=np.float32)),
                      torch.from_numpy(np.concatenate([train[::-1], [0.0]]).astype(np.float32)), None)

    # ------------------------------------------------------------------ planning
    def _plan(self, num_inference_steps: int | None) -> tuple[list[float], list[Any], float]:
        """``(evaluation sigmas, stage descriptors, final sigma)``; subclasses implement."""
        raise NotImplementedError

    def _outer_sigmas(self, n: int) -> np.ndarray:
        """The ``n`` step sigmas of the configured spacing (Karras etc. where enabled) plus a final 0."""
        _, sigmas, _ = self._spaced_sigmas(n)
        return np.concatenate([np.asarray(sigmas, dtype=np.float64), [0.0]])

    def _sigma_range(self) -> tuple[float, float]:
        train = self._train_sigmas()
        return float(train.min()), float(train.max())

    def _validate_steps(self, num_inference_steps: Any) -> int:
        return self._check_sigma_set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Plan every model evaluation; ``timesteps``/``sigmas`` get one entry per evaluation."""
        n = self._validate_steps(num_inference_steps)
        evals, stages, final = self._plan(n)
        self.num_inference_steps = n
        self._eval_sigmas = [float(s) for s in evals]
        self._stages = stages
        self._final_sigma = float(final)
        log_sigmas = np.log(self._train_sigmas())
        steps = sigma_to_t(np.asarray(self._eval_sigmas), log_sigmas).astype(np.float32)
        sigmas = np.asarray(self._eval_sigmas + [self._final_sigma], dtype=np.float32)
        self._publish(torch.from_numpy(steps), torch.from_numpy(sigmas), device)
        self._reset_state()

    def _reset_state(self) -> None:
        """Forget solver state between loops (subclasses extend)."""

    def _starts_a_step(self, k: int) -> bool:
        """Whether evaluation ``k`` is the first of its step, so a loop may start there (multi-stage subclasses)."""
        return True

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at ``timesteps[begin_index]``, the first evaluation of one of the planned steps."""
        begin_index = check_begin_index(begin_index)
        if begin_index < len(self._stages) and not self._starts_a_step(begin_index):
            starts = [k for k in range(len(self._stages)) if self._starts_a_step(k)]
            raise ValueError(
                f"begin_index={begin_index} falls inside a multi-stage step of {type(self).__name__}; "
                f"start the loop at one of {starts}"
            )
        super().set_begin_index(begin_index)

    # ------------------------------------------------------------------ stepping
    def _require_timesteps(self) -> None:
        if not self._stages:
            raise RuntimeError(
                f"{type(self).__name__}.step was called before set_timesteps; "
                "call scheduler.set_timesteps(num_inference_steps) first"
            )

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def _advance(self, k: int, x: torch.Tensor, denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        """Use evaluation ``k`` (its input ``x`` and denoised estimate) and return the next input."""
        raise NotImplementedError

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutputWithX0 | tuple:
        """Consume one model evaluation; ``prev_sample`` is the input of the next one (or the result)."""
        self._require_timesteps()
        integer = isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool)
        if integer or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"{type(self).__name__}.step got an integer timestep; pass one of scheduler.timesteps, "
                "not a loop index"
            )
        if self._step_index is None:
            self._init_step_index(timestep)
        k = self._step_index
        if k >= len(self._stages):
            raise ValueError(
                f"step called {k + 1} times for {len(self._stages)} planned model evaluations; "
                "call set_timesteps again to start a new loop"
            )
        x = sample if sample.dtype in (torch.float32, torch.float64) else sample.float()
        denoised = self._x0_from_sigma(model_output.to(x.dtype), x, self._eval_sigmas[k])
        prev_sample = self._advance(k, x, denoised, generator).to(model_output.dtype)
        self._step_index = k + 1
        if not return_dict:
            return prev_sample, denoised
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=denoised)

    @property
    def init_noise_sigma(self) -> float:
        top = max(self._eval_sigmas) if self._eval_sigmas else float(self.sigmas.max())
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return top
        return (top**2 + 1) ** 0.5
