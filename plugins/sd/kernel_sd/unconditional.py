"""Unconditional image generation with a ``UNet2DModel``: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021)."""

from __future__ import annotations

import logging

import torch

from kernel.engine import Conditioning
from kernel.pipeline import DiffusionPipeline
from kernel.tasks import NoGuidance

from kernel.pipeline_utils import check_generators
from kernel.scheduling import randn_tensor
from kernel_sd.outputs import ImagePipelineOutput

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")


class _UnconditionalBase(DiffusionPipeline):
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler) -> None:
        self.register_modules(unet=unet, scheduler=self._adapt_scheduler(scheduler))

    @staticmethod
    def _adapt_scheduler(scheduler):
        return scheduler

    def _start(self, batch_size: int, generator, output_type: str) -> torch.Tensor:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; use one of {list(OUTPUT_TYPES)}")
        check_generators(generator, batch_size)
        size = self.unet.config.sample_size
        spatial = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *spatial)
        return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.unet(model_input, timestep, **kwargs).sample

    def _run(self, image: torch.Tensor, num_inference_steps: int, step_kwargs: dict) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps)
        return self.denoise(image, self.scheduler.timesteps, num_inference_steps, Conditioning({}), NoGuidance(),
                            step_kwargs=step_kwargs)

    def _finish(self, image: torch.Tensor, output_type: str, return_dict: bool):
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


class DDPMPipeline(_UnconditionalBase):
    """Ancestral sampling with the DDPM scheduler (or any scheduler with the same step signature)."""

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator=None, num_inference_steps: int = 1000,
                 output_type: str = "pil", return_dict: bool = True):
        image = self._start(batch_size, generator, output_type)
        image = self._run(image, num_inference_steps, {"generator": generator})
        return self._finish(image, output_type, return_dict)


class DDIMPipeline(_UnconditionalBase):
    """DDIM sampling; any scheduler given is converted to a ``DDIMScheduler`` with the same config."""

    @staticmethod
    def _adapt_scheduler(scheduler):
        if scheduler is None or type(scheduler).__name__ == "DDIMScheduler":
            return scheduler
        import kernel

        return kernel.component("DDIMScheduler").from_config(scheduler.config)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator=None, eta: float = 0.0, num_inference_steps: int = 50,
                 use_clipped_model_output: bool | None = None, output_type: str = "pil", return_dict: bool = True):
        if not 0.0 <= eta <= 1.0:
            logger.warning("eta=%s is outside [0, 1] (0 is DDIM, 1 is DDPM-like)", eta)
        image = self._start(batch_size, generator, output_type)
        image = self._run(image, num_inference_steps, {"eta": eta, "use_clipped_model_output": use_clipped_model_output,
                                                      "generator": generator})
        return self._finish(image, output_type, return_dict)
