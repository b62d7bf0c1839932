"""Shared machinery of the diffusion-transformer pipelines (SD3, Flux, PixArt); see :mod:`kernel_dit_common.base`."""

from kernel_dit_common import base
from kernel_dit_common.base import *  # noqa: F401,F403 - the public names are base.__all__

__all__ = list(base.__all__)
