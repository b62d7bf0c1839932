"""The kernel contract suite on what kernel-cogvideo registers, with tiny components built from our own classes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import DenoiserContract

sys.path.insert(0, str(Path(__file__).parent))
import cog_fixtures as fx  # noqa: E402
from cog_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_transformer():
    torch.manual_seed(0)
    return kernel.component("CogVideoXTransformer3DModel")(**fx.transformer_config("sincos"))


class TestCogVideoXTransformer3DModelContracts(DenoiserContract):
    component = staticmethod(tiny_transformer)

    @staticmethod
    def contract_inputs(model, batch_size, generator):
        return {"hidden_states": torch.randn(batch_size, 3, 4, 8, 8, generator=generator),
                "timestep": torch.tensor([10] * batch_size),
                "encoder_hidden_states": torch.randn(batch_size, 7, 16, generator=generator)}
