"""The kernel contract suite on the tiny Würstchen prior and decoder."""

from __future__ import annotations

import torch

from kernel_contracts import DenoiserContract
from kernel_wuerstchen import WuerstchenDiffNeXt, WuerstchenPrior
from wuerstchen_fixtures import DECODER_LEVELS, PRIOR, randomize

#: The components below are built by functions, which the coverage scan cannot read.
CONTRACT_COVERS = ["WuerstchenPrior", "WuerstchenDiffNeXt"]

#: Diffusers' configs name the channels ``c_in`` / ``c_out``; the contract reads ``in_channels`` /
#: ``out_channels`` from the config and expects ``None`` channels.  test_wuerstchen_models.py checks the shapes.
_CHANNEL_KEYS = {"output_shape": "config names the channels c_in/c_out (Diffusers' keys), not in_/out_channels"}


def tiny_prior():
    return randomize(WuerstchenPrior(**PRIOR))


def tiny_decoder():
    return randomize(WuerstchenDiffNeXt(**DECODER_LEVELS))


class TestWuerstchenPrior(DenoiserContract):
    component = tiny_prior
    known_failures = _CHANNEL_KEYS

    def contract_inputs(self, model, batch_size, generator):
        return {"x": torch.randn(batch_size, PRIOR["c_in"], 4, 4, generator=generator),
                "r": torch.rand(batch_size, generator=generator),
                "c": torch.randn(batch_size, 5, PRIOR["c_cond"], generator=generator)}


class TestWuerstchenDiffNeXt(DenoiserContract):
    component = tiny_decoder
    known_failures = _CHANNEL_KEYS

    def contract_inputs(self, model, batch_size, generator):
        return {"x": torch.randn(batch_size, 4, 8, 8, generator=generator),
                "r": torch.rand(batch_size, generator=generator),
                "effnet": torch.randn(batch_size, 16, 2, 2, generator=generator),
                "clip": torch.randn(batch_size, 3, DECODER_LEVELS["clip_embd"], generator=generator)}
