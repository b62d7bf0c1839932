"""The kernel contract suite on AutoencoderTiny (AutoencoderKL runs it in contracts/tests).

At 32x32 the tiling contract compares identical paths: TAESD tiles are 512 px, and smaller tiles
are not a faithful check (the decoder's receptive field is wider than a tiny tile).
"""

from __future__ import annotations

import pytest
import torch

import kernel
from kernel_contracts import AutoencoderContract


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_taesd():
    torch.manual_seed(0)
    return kernel.component("AutoencoderTiny")(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))


class TestAutoencoderTinyContracts(AutoencoderContract):
    component = tiny_taesd

    def contract_inputs(self, model, batch_size, generator):
        return {"x": torch.rand(batch_size, 3, 32, 32, generator=generator) * 2 - 1}
