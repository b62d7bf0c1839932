"""Würstchen v2 (Pernias et al., arXiv:2306.00637) for kernel: the stage C prior and the stage B decoder.

Stage A (``PaellaVQModel``) and the sampler (``DDPMWuerstchenScheduler``) come from kernel-stable-cascade.
"""

from kernel_wuerstchen.modeling_diffnext import WuerstchenDiffNeXt
from kernel_wuerstchen.modeling_prior import WuerstchenPrior
from kernel_wuerstchen.pipelines import (DEFAULT_STAGE_C_TIMESTEPS, WuerstchenCombinedPipeline,
                                         WuerstchenDecoderPipeline, WuerstchenPriorPipeline,
                                         WuerstchenPriorPipelineOutput)

__all__ = ["DEFAULT_STAGE_C_TIMESTEPS", "WuerstchenCombinedPipeline", "WuerstchenDecoderPipeline", "WuerstchenDiffNeXt",
           "WuerstchenPrior", "WuerstchenPriorPipeline", "WuerstchenPriorPipelineOutput"]
