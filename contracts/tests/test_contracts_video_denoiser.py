"""The denoiser ``output_shape`` contract on frames-first video denoisers ``(B, F, C, H, W)`` (``channel_dim=2``)."""

from __future__ import annotations

import torch

import kernel_contracts


class FramesFirstDenoiser(torch.nn.Module):
    component_kind = "denoiser"

    def __init__(self, out_channels: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.config = {"in_channels": 4, "out_channels": out_channels}
        self.proj = torch.nn.Linear(4, out_channels)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        # (B, F, C, H, W) -> channels last -> project -> back
        return self.proj(hidden_states.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)


class DropsAFrame(FramesFirstDenoiser):
    def forward(self, hidden_states, timestep):
        return super().forward(hidden_states, timestep)[:, 1:]


def inputs(model, batch_size, generator):
    return {"hidden_states": torch.randn(batch_size, 3, 4, 5, 5, generator=generator),
            "timestep": torch.tensor([10] * batch_size)}


def test_frames_first_denoiser_passes_with_its_channel_dim():
    assert kernel_contracts.check(FramesFirstDenoiser, contracts=["output_shape"], contract_inputs=inputs,
                                  channel_dim=2) == []


def test_without_the_declaration_channels_are_expected_at_dim_1():
    (failure,) = kernel_contracts.check(FramesFirstDenoiser, contracts=["output_shape"], contract_inputs=inputs)
    assert "expected (1, 6, 4, 5, 5)" in failure.message, failure.message


def test_a_lost_frame_fails():
    (failure,) = kernel_contracts.check(DropsAFrame, contracts=["output_shape"], contract_inputs=inputs, channel_dim=2)
    assert "output shape (1, 2, 6, 5, 5); expected (1, 3, 6, 5, 5)" in failure.message, failure.message


def test_a_wrong_channel_dim_is_reported():
    (failure,) = kernel_contracts.check(FramesFirstDenoiser, contracts=["output_shape"], contract_inputs=inputs,
                                        channel_dim=1)
    assert "channel_dim=1" in failure.message and "in_channels=4" in failure.message
