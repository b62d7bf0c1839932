"""Two-step consistency sampling for OpenAI's consistency decoder, for kernel."""

from kernel_sched_consistency_decoder.consistency_decoder import (
    ConsistencyDecoderScheduler,
    ConsistencyDecoderSchedulerOutput,
)

__all__ = ["ConsistencyDecoderScheduler", "ConsistencyDecoderSchedulerOutput"]
