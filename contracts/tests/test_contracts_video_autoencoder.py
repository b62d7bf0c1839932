"""The autoencoder contracts on 5-D video inputs ``(B, C, F, H, W)``: the time axis and its compression rule.

A toy causal video autoencoder (frame 0 alone, then one latent frame per ``t`` frames, like the causal 3-D VAEs)
passes; variants that misreport or break the time axis fail ``encode_decode_shapes`` with a message.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernel_contracts


class ToyVideoAutoencoder(torch.nn.Module):
    component_kind = "autoencoder"

    def __init__(self, spatial: int = 2, temporal: int = 4, report_temporal: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.config = {"latent_channels": 4, "in_channels": 3}
        if report_temporal:
            self.config["temporal_compression_ratio"] = temporal
        self.spatial_compression_ratio = spatial
        self.t = temporal
        self.enc = torch.nn.Conv3d(3, 4, 1)
        self.dec = torch.nn.Conv3d(4, 3, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.t]  # frames 0, t, 2t, ...: 1 + (F - 1) // t of them
        return self.enc(F.avg_pool3d(x, (1, self.spatial_compression_ratio, self.spatial_compression_ratio)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(self.t, dim=2)], dim=2)
        s = self.spatial_compression_ratio
        return self.dec(F.interpolate(z, scale_factor=(1, s, s), mode="nearest"))

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return (z - 0.1) * 0.5

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z / 0.5 + 0.1


class MisreportedTemporalRatio(ToyVideoAutoencoder):
    def __init__(self):
        super().__init__()
        self.temporal_compression_ratio = 2  # the attribute is read first; the model compresses by 4


class PerFrameDecode(ToyVideoAutoencoder):
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        s = self.spatial_compression_ratio
        return self.dec(F.interpolate(z, scale_factor=(1, s, s), mode="nearest"))  # forgets to expand time


class NonCausal(ToyVideoAutoencoder):
    """Plain (non-causal) temporal compression: ``F // t`` latent frames, ``f * t`` frames back."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spatial_compression_ratio
        return self.enc(F.avg_pool3d(x, (self.t, s, s)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        s = self.spatial_compression_ratio
        return self.dec(F.interpolate(z, scale_factor=(self.t, s, s), mode="nearest"))


def video_inputs(model, batch_size, generator):
    return {"x": torch.rand(batch_size, 3, 9, 8, 8, generator=generator) * 2 - 1}


OPTS = {"contract_inputs": video_inputs}


def test_causal_video_autoencoder_passes_every_contract():
    assert kernel_contracts.check(ToyVideoAutoencoder, **OPTS) == []


@pytest.mark.parametrize("mutant, words", [
    (MisreportedTemporalRatio, "temporal_compression_ratio=2"),
    (PerFrameDecode, "decode gave"),
    (NonCausal, "latents (1, 4, 2, 4, 4) for video (1, 3, 9, 8, 8)"),
], ids=["misreported-ratio", "decode-keeps-latent-frames", "non-causal"])
def test_broken_time_axis_fails_encode_decode_shapes(mutant, words):
    failures = kernel_contracts.check(mutant, contracts=["encode_decode_shapes"], **OPTS)
    assert [f.contract for f in failures] == ["encode_decode_shapes"]
    assert words in failures[0].message, failures[0].message


def test_other_frame_rules_are_declared():
    rule = {"latent_frames": lambda frames, t: frames // t, "decoded_frames": lambda latent, t: latent * t}

    def inputs(model, batch_size, generator):  # 8 frames: a whole number of plain groups of 4
        return {"x": torch.rand(batch_size, 3, 8, 8, 8, generator=generator)}

    assert kernel_contracts.check(NonCausal, contracts=["encode_decode_shapes"], contract_inputs=inputs, **rule) == []
    # the declared rule is applied, not ignored: the causal model now fails it
    failures = kernel_contracts.check(ToyVideoAutoencoder, contracts=["encode_decode_shapes"], contract_inputs=inputs,
                                      **rule)
    assert [f.contract for f in failures] == ["encode_decode_shapes"]


def test_the_ratio_comes_from_the_config_or_a_declaration():
    def unreported():
        return ToyVideoAutoencoder(report_temporal=False)

    (failure,) = kernel_contracts.check(unreported, contracts=["encode_decode_shapes"], **OPTS)
    assert "temporal_compression_ratio" in failure.message and "contract_options" in failure.message
    assert kernel_contracts.check(unreported, contracts=["encode_decode_shapes"], temporal_compression_ratio=4,
                                  **OPTS) == []
    failures = kernel_contracts.check(unreported, contracts=["encode_decode_shapes"], temporal_compression_ratio=3,
                                      **OPTS)
    assert failures and "temporal_compression_ratio=3" in failures[0].message
