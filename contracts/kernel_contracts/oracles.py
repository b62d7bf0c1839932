"""Exact model outputs for a scheduler's convergence contract.

The data distribution is a single known point ``x0`` and the trajectory starts from
``add_noise(x0, noise, t_max)``.  Every sampler of the family considered here keeps the state
on the line ``alpha * x0 + sigma * noise`` when the model is exact, so the exact outputs are:

=================  =========================================================
prediction type     exact model output for an input ``a * x0 + s * noise``
=================  =========================================================
``epsilon``         ``noise`` (the true noise, Ho et al. 2020)
``sample``          ``x0``
``v_prediction``    ``a * noise - s * x0`` (Salimans & Ho 2022, eq. 7 with a^2+s^2=1)
``flow_prediction`` ``noise - x0`` (the rectified-flow velocity, Liu et al. 2022)
=================  =========================================================

``a`` and ``s`` are read off the model input itself by least squares on ``[x0, noise]``, so the
oracle needs no knowledge of the scheduler's tables (the model input is what a pipeline hands
the network: the output of ``scale_model_input``).

Because the oracle is exact, a consistent solver of *any* order reaches ``x0`` up to the noise
left at its final noise level and float rounding; see :data:`CONVERGENCE_TOLERANCE`.
"""

from __future__ import annotations

import torch

#: Relative RMS error ``rms(x_end - x0) / rms(noise)`` allowed at the end of the loop, by the
#: solver's order of accuracy.  With the exact oracle the truncation error of every order is
#: zero, so the allowance is the same for every order: it covers the noise a schedule leaves at
#: its last step (``sqrt(1 - alpha_bar[0])`` is about 0.03 for Stable Diffusion's betas, ``sigma_min``
#: for schedules that stop there) plus float32 rounding amplified by ``1/alpha`` at high noise.
CONVERGENCE_TOLERANCE: dict[int, float] = {1: 0.1, 2: 0.1, 3: 0.1}


def tolerance_for(order: int) -> float:
    return CONVERGENCE_TOLERANCE.get(int(order), max(CONVERGENCE_TOLERANCE.values()))


def line_coefficients(x: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> tuple[float, float]:
    """Least-squares ``(a, s)`` with ``x ~= a * x0 + s * noise`` (float64 normal equations)."""
    basis = torch.stack([x0.flatten(), noise.flatten()], dim=1).double()
    target = x.flatten().double()
    coef = torch.linalg.lstsq(basis, target.unsqueeze(1)).solution.flatten()
    return float(coef[0]), float(coef[1])


def exact_output(prediction_type: str, model_input: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The exact model output for ``prediction_type`` at ``model_input`` (see the module table)."""
    if prediction_type == "epsilon":
        out = noise
    elif prediction_type == "sample":
        out = x0
    elif prediction_type == "flow_prediction":
        out = noise - x0
    elif prediction_type == "v_prediction":
        a, s = line_coefficients(model_input, x0, noise)
        out = a * noise - s * x0
    else:
        raise ValueError(
            f"prediction_type={prediction_type!r} has no exact oracle; accepted values: "
            "epsilon, sample, v_prediction, flow_prediction (declare exact_model_output= for others)"
        )
    return out.to(model_input.dtype)


def edm_output(sigma_data: float = 0.5):
    """Exact outputs for EDM-preconditioned schedulers (Karras et al. 2022, Table 1).

    There the model output ``F`` enters as ``x0 = c_skip * x + c_out * F`` with
    ``c_skip = sd^2 / (sigma^2 + sd^2)`` and ``c_out = +-sigma * sd / sqrt(sigma^2 + sd^2)``
    (``-`` for ``v_prediction``), and the model input is ``x / sqrt(sigma^2 + sd^2)``, so
    ``sigma = s / a`` from the fitted line coefficients.  A plugin declares this oracle with
    ``exact_model_output=edm_output(sigma_data)``.
    """

    def output(prediction_type: str, model_input: torch.Tensor, t, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a, s = line_coefficients(model_input, x0, noise)
        sigma = s / a
        x = x0.double() + sigma * noise.double()
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
        if prediction_type == "v_prediction":
            c_out = -c_out
        return ((x0.double() - c_skip * x) / c_out).to(model_input.dtype)

    return output
