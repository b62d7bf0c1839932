"""``DanceDiffusionPipeline``: unconditional waveform generation with a ``UNet1DModel`` (Harmonai's
Dance Diffusion), sampled by default with improved PNDM (``IPNDMScheduler``) on v-diffusion angles."""

from __future__ import annotations

import logging
from numbers import Real

import numpy as np
import torch

from kernel.engine import Conditioning
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_generators, check_output_type, step_kwargs
from kernel.scheduling import randn_tensor
from kernel.tasks import NoGuidance
from kernel_audio.outputs import AudioPipelineOutput

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pt")


class DanceDiffusionPipeline(DiffusionPipeline):
    """Generate ``batch_size`` waveforms ``(B, channels, samples)`` at the UNet's ``sample_rate``.

    The loop is the kernel's (:meth:`kernel.engine.Engine.denoise`, one unguided evaluation per
    step); this class sets up the noise for ``audio_length_in_s`` (padded up to the UNet's
    multiple) and crops and clamps the result.
    """

    pipeline_family = "dance-diffusion"
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler) -> None:
        self.register_modules(unet=unet, scheduler=scheduler)

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.unet(model_input, timestep.to(model_input.dtype), return_dict=False, **kwargs)[0]

    def _samples(self, audio_length_in_s) -> tuple[int, int]:
        """(samples to generate, a multiple of the UNet's factor; samples to return)."""
        rate = self.unet.config.sample_rate
        if rate is None:
            raise ValueError("the UNet's config has no sample_rate, so audio_length_in_s cannot be turned into samples; "
                             "set unet.config.sample_rate (Hz)")
        if audio_length_in_s is None:
            audio_length_in_s = self.unet.config.sample_size / rate
        if isinstance(audio_length_in_s, bool) or not isinstance(audio_length_in_s, Real) or \
                not np.isfinite(audio_length_in_s):
            raise ValueError(f"audio_length_in_s must be a number of seconds, got {audio_length_in_s!r}")
        factor = self.unet.downsample_factor
        samples = audio_length_in_s * rate
        if samples < 3 * factor:
            raise ValueError(f"audio_length_in_s={audio_length_in_s} is too short: this UNet needs at least "
                             f"{3 * factor / rate} s ({3 * factor} samples at {rate} Hz)")
        keep = int(samples)
        if samples % factor:
            samples = (samples // factor + 1) * factor
            logger.info("audio_length_in_s=%s is padded to %s s for the UNet and cut back after sampling",
                        audio_length_in_s, samples / rate)
        return int(samples), keep

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 100,
        generator: torch.Generator | list[torch.Generator] | None = None,
        audio_length_in_s: float | None = None,
        return_dict: bool = True,
        output_type: str = "np",
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        check_output_type(output_type, OUTPUT_TYPES)
        check_generators(generator, batch_size)
        samples, keep = self._samples(audio_length_in_s)
        device, dtype = self._execution_device, next(self.unet.parameters()).dtype
        audio = randn_tensor((batch_size, self.unet.config.in_channels, samples), generator=generator, device=device,
                             dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        audio = audio * self.scheduler.init_noise_sigma  # 1 for iPNDM; sigma-based schedulers start wider
        audio = self.denoise(audio, self.scheduler.timesteps, num_inference_steps, Conditioning({}), NoGuidance(),
                             step_kwargs=step_kwargs(self.scheduler, generator, 0.0))
        audio = audio.clamp(-1, 1).float().cpu()[:, :, :keep]
        self.maybe_free_model_hooks()
        if output_type == "np":
            audio = audio.numpy()
        return AudioPipelineOutput(audios=audio) if return_dict else (audio,)

    @property
    def sampling_rate(self) -> int | None:
        """Samples per second of the waveforms (the UNet's ``sample_rate``)."""
        return self.unet.config.sample_rate
