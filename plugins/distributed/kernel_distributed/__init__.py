"""Scale-out on ``torch.distributed`` (the ``kernel-distributed`` distribution); see docs/distributed.md.

* data parallel: :func:`split_prompts` (accelerate's ``PartialState.split_between_processes``),
  :func:`shared_seed`; ``kernel generate --batch-file`` uses them under torchrun / accelerate launch;
* context parallel: ``model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=..., ring_degree=...))``
  splits a transformer denoiser's token sequence across ranks (:mod:`kernel_distributed.plans`,
  Ulysses and ring attention in :mod:`kernel_distributed.attention`);
* ``kernel.load(..., device_map="balanced")``: whole components spread over the GPUs
  (:mod:`kernel_distributed.placement`), ``pipe.hf_device_map``, ``pipe.reset_device_map()``.
"""

from kernel_distributed.config import ContextParallelConfig, ParallelConfig
from kernel_distributed.data import is_distributed_launch, process_device, shared_seed, split_prompts
from kernel_distributed.plans import (
    PLANS,
    ContextParallelInput,
    ContextParallelOutput,
    disable_parallelism,
    enable_parallelism,
)
from kernel_distributed.placement import balanced_placement
from kernel_distributed.runtime import DistributedError, init_distributed

__all__ = [
    "ContextParallelConfig", "ParallelConfig", "ContextParallelInput", "ContextParallelOutput", "PLANS",
    "enable_parallelism", "disable_parallelism", "split_prompts", "shared_seed", "process_device",
    "is_distributed_launch", "balanced_placement", "DistributedError", "init_distributed",
]
