"""The kernel contract suite on the Kandinsky 3 components (tiny models)."""

from __future__ import annotations

import torch

from kernel_contracts import DenoiserContract
from kernel_kandinsky.unet_kandinsky3 import Kandinsky3UNet

TINY = dict(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
            block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32)


def tiny_unet():
    torch.manual_seed(0)
    return Kandinsky3UNet(**TINY).eval()


class TestKandinsky3UNet(DenoiserContract):
    component = tiny_unet

    def contract_inputs(self, model, batch_size, generator):
        mask = torch.ones(batch_size, 6, dtype=torch.long)
        mask[:, 4:] = 0
        return {"sample": torch.randn(batch_size, 4, 8, 8, generator=generator), "timestep": torch.tensor(10),
                "encoder_hidden_states": torch.randn(batch_size, 6, 32, generator=generator),
                "encoder_attention_mask": mask}
