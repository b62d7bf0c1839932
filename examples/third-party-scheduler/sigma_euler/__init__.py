"""An example third-party scheduler plugin for kernel (see docs/plugins.md)."""

from sigma_euler.scheduler import SigmaEulerScheduler


def _sigma_euler(config=None):
    return SigmaEulerScheduler.from_config(config or {})


SAMPLERS = {"Sigma Euler": _sigma_euler}

__all__ = ["SigmaEulerScheduler", "SAMPLERS"]
