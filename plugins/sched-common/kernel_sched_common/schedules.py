"""The noise-schedule math, written once and imported by every scheduler plugin:

* beta schedules (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid``,
  ``exp``, ``laplace``) and :func:`betas_for_alpha_bar` (Nichol & Dhariwal 2021),
* :func:`rescale_zero_terminal_snr` (Lin et al. 2023, "Common Diffusion Noise
  Schedules and Sample Steps are Flawed", Algorithm 1),
* timestep spacings (``linspace``, ``leading``, ``trailing``; same paper, Table 2),
* sigma spacings: Karras (Karras et al. 2022, eq. 5), exponential, and beta
  (Lee et al. 2024, "Beta Sampling is All You Need"),
* log-sigma interpolation between sigmas and (fractional) timesteps,
* dynamic thresholding (Saharia et al. 2022, Imagen, section 2.3),
* the argument checks every ``set_timesteps`` shares (:func:`check_choice`,
  :func:`validate_num_inference_steps`, :func:`validate_custom_schedule`) and :func:`broadcast_to`.

Schedule tables are built with numpy/torch on the CPU; schedulers move only what
``step`` needs to the sample's device, so the denoising loop never syncs.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "exp", "laplace")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")


def check_choice(argument: str, value: Any, accepted: Iterable[str]) -> None:
    """Raise a ``ValueError`` naming ``argument`` and the accepted values when ``value`` is not one of them."""
    accepted = tuple(accepted)
    if value not in accepted:
        close = difflib.get_close_matches(str(value), accepted, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{argument}={value!r} is not supported; accepted values: {', '.join(accepted)}.{hint}")


# ---------------------------------------------------------------------------- betas
def betas_for_alpha_bar(
    num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine"
) -> torch.Tensor:
    """Betas that discretise a continuous ``alpha_bar(t)``, t in [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    check_choice("alpha_transform_type", alpha_transform_type, ("cosine", "exp", "laplace"))
    if alpha_transform_type == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    elif alpha_transform_type == "laplace":

        def alpha_bar(t: float) -> float:
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

    else:

        def alpha_bar(t: float) -> float:
            return math.exp(t * -12.0)

    betas = [
        min(1 - alpha_bar((i + 1) / num_diffusion_timesteps) / alpha_bar(i / num_diffusion_timesteps), max_beta)
        for i in range(num_diffusion_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    accepted: Sequence[str] = ("linear", "scaled_linear", "squaredcos_cap_v2"),
) -> torch.Tensor:
    """The float32 beta table for a Diffusers-style ``beta_schedule`` (or the given ``trained_betas``)."""
    if trained_betas is not None:
        return torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    check_choice("beta_schedule", beta_schedule, accepted)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps)
    if beta_schedule == "sigmoid":
        ramp = torch.linspace(-6, 6, num_train_timesteps)
        return torch.sigmoid(ramp) * (beta_end - beta_start) + beta_start
    return betas_for_alpha_bar(num_train_timesteps, alpha_transform_type=beta_schedule)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``sqrt(alpha_bar)`` so the last timestep has zero SNR (Lin et al. 2023, Alg. 1)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


# ---------------------------------------------------------------------------- timesteps
def validate_num_inference_steps(num_inference_steps: Any, num_train_timesteps: int | None = None) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    if num_train_timesteps is not None and num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} cannot be larger than the scheduler's "
            f"num_train_timesteps={num_train_timesteps}"
        )
    return int(num_inference_steps)


def validate_custom_schedule(timesteps: Any = None, sigmas: Any = None, *, descending: str = "timesteps") -> None:
    """Custom ``timesteps`` and ``sigmas`` are exclusive and must be strictly descending."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass either timesteps or sigmas to set_timesteps, not both")
    for name, values in (("timesteps", timesteps), ("sigmas", sigmas)):
        if values is None or name != descending:
            continue
        arr = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"custom {name} must be a non-empty 1-D sequence")
        if np.any(np.diff(arr) >= 0):
            raise ValueError(f"custom {name} must be strictly descending, got {arr.tolist()}")


def spaced_timesteps(
    spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0
) -> np.ndarray:
    """Integer timesteps, descending, for the three Diffusers spacings (Lin et al. 2023, Table 2)."""
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = num_train_timesteps // num_inference_steps
        steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
        return steps + steps_offset
    ratio = num_train_timesteps / num_inference_steps
    return np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1


def float_spaced_timesteps(
    spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0
) -> np.ndarray:
    """Float32 timesteps as the sigma-based (k-diffusion style) schedulers space them."""
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = num_train_timesteps // num_inference_steps
        steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.float32)
        return steps + steps_offset
    ratio = num_train_timesteps / num_inference_steps
    return (np.arange(num_train_timesteps, 0, -ratio).round().copy().astype(np.float32)) - 1


# ---------------------------------------------------------------------------- sigmas
def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` as a float64-free numpy array (float32 math, like Diffusers)."""
    return np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timestep of each sigma by linear interpolation in log-sigma."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: ``(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho``."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Sigmas evenly spaced in log space from ``sigma_max`` down to ``sigma_min``."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def beta_sigmas(
    sigma_min: float, sigma_max: float, num_inference_steps: int, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    """Sigmas placed at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024)."""
    try:
        import scipy.stats
    except ImportError as err:  # pragma: no cover - scipy is a declared dependency of the schedulers that use it
        raise ImportError("use_beta_sigmas needs scipy: pip install scipy") from err
    ppf = [scipy.stats.beta.ppf(t, alpha, beta) for t in 1 - np.linspace(0, 1, num_inference_steps)]
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppf])


def check_sigma_options(use_karras: bool, use_exponential: bool, use_beta: bool) -> None:
    if sum(bool(x) for x in (use_karras, use_exponential, use_beta)) > 1:
        raise ValueError(
            "only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas can be True"
        )


def convert_sigmas(
    in_sigmas: np.ndarray | torch.Tensor,
    num_inference_steps: int,
    *,
    use_karras_sigmas: bool = False,
    use_exponential_sigmas: bool = False,
    use_beta_sigmas: bool = False,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> np.ndarray:
    """Respace ``in_sigmas`` (descending) with the chosen spacing; unchanged when no option is set."""
    check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
    arr = in_sigmas.cpu().numpy() if isinstance(in_sigmas, torch.Tensor) else np.asarray(in_sigmas)
    lo = float(sigma_min) if sigma_min is not None else float(arr[-1])
    hi = float(sigma_max) if sigma_max is not None else float(arr[0])
    if use_karras_sigmas:
        return karras_sigmas(lo, hi, num_inference_steps, rho)
    if use_exponential_sigmas:
        return exponential_sigmas(lo, hi, num_inference_steps)
    if use_beta_sigmas:
        return beta_sigmas(lo, hi, num_inference_steps)
    return arr


# ---------------------------------------------------------------------------- thresholding
def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen, Saharia et al. 2022, section 2.3).

    Clamp each item's predicted x0 to the ``ratio`` quantile ``s`` of its absolute values
    (``1 <= s <= max_value``) and divide by ``s``.
    """
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile and clamp are not implemented for half on the CPU
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)


# ---------------------------------------------------------------------------- broadcasting
def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-batch vector so it broadcasts over ``like`` (``[B] -> [B, 1, 1, ...]``)."""
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))
