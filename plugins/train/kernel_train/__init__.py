"""Training for kernel models, in the spirit of Diffusers' example scripts.

* :mod:`kernel_train.text_to_image` - denoiser (and optionally text encoder, or LoRA) training
  for Stable-Diffusion-layout pipelines (``kernel-train-text-to-image``);
* :mod:`kernel_train.vae` - ``AutoencoderKL`` training (``kernel-train-vae``);
* :mod:`kernel_train.ema` - exponential moving average of weights;
* :mod:`kernel_train.datasets` - image/caption datasets (an image folder with ``metadata.jsonl``,
  or a dataset a plugin provides, such as ``shapes``).

Both scripts run on ``accelerate`` (mixed precision, gradient accumulation, checkpoint and
exact resume).
"""

from kernel_train.ema import EMAModel

__all__ = ["EMAModel"]
