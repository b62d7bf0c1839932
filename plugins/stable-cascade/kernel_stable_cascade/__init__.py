"""Stable Cascade (Würstchen v3) for kernel: the stage B / stage C UNet, the stage A Paella VQ autoencoder, the
scheduler, and the prior, decoder and combined pipelines."""

from kernel_stable_cascade.unet_stable_cascade import StableCascadeUNet, StableCascadeUNetOutput

from kernel_stable_cascade.paella_vq_model import PaellaVQModel
from kernel_stable_cascade.pipeline_combined import StableCascadeCombinedPipeline
from kernel_stable_cascade.pipeline_decoder import ImagePipelineOutput, StableCascadeDecoderPipeline
from kernel_stable_cascade.pipeline_prior import StableCascadePriorPipeline, StableCascadePriorPipelineOutput
from kernel_stable_cascade.scheduler import DDPMWuerstchenScheduler

__all__ = ["DDPMWuerstchenScheduler", "ImagePipelineOutput", "PaellaVQModel", "StableCascadeCombinedPipeline",
           "StableCascadeDecoderPipeline",
           "StableCascadePriorPipeline", "StableCascadePriorPipelineOutput", "StableCascadeUNet",
           "StableCascadeUNetOutput"]
