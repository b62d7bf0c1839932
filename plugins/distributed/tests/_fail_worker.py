"""Rank script for the failure test: a tiny custom model with its own plan (even splits, Diffusers-style),
one good forward on both ranks, then rank 1 raises and rank 0 must get a clear error, not hang."""

import sys
import time

import torch
from torch import nn

from kernel_distributed import ContextParallelConfig, ContextParallelInput, ContextParallelOutput, DistributedError
from kernel_distributed import init_distributed
from kernel_layers.attention import Attention, AttentionMixin

PLAN = {"": {"x": ContextParallelInput(split_dim=1, expected_dims=3)},
        "out": ContextParallelOutput(gather_dim=1, expected_dims=3)}


class Tiny(AttentionMixin, nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.attn, self.out = nn.Linear(8, 8), Attention(8, heads=2, dim_head=4), nn.Linear(8, 8)

    def forward(self, x):
        return self.out(self.attn(self.proj(x)))


def main(mode: str) -> None:
    rank, _, _ = init_distributed()
    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(2, 6, 8)
    with torch.no_grad():
        expected = model(x)
        model.enable_parallelism(config=ContextParallelConfig(**{f"{mode}_degree": 2}), cp_plan=PLAN)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
        print(f"rank {rank}: custom plan forward matches", flush=True)
        if rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        time.sleep(1.0)  # let rank 1 die first
        start = time.monotonic()
        try:
            model(x)
        except DistributedError as err:
            print(f"rank 0 stopped after {time.monotonic() - start:.1f} s: {err}", file=sys.stderr, flush=True)
            sys.exit(3)
    sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
