"""AnimateDiff for kernel: motion adapters, the motion UNet and the text/video-to-video, SDXL and ControlNet
pipelines, and SparseCtrl (SparseControlNetModel) for it.

The names are imported on first use, so the single-file hooks (:mod:`kernel_animatediff.hooks`) load without
torch (``kernel plugins`` and ``kernel --help`` must stay torch-free)."""

from __future__ import annotations

_LAZY: dict[str, str] = {
    "FreeInitMixin": "kernel_animatediff.free_init",
    "FreeNoiseMixin": "kernel_animatediff.free_noise",
    "MotionAdapter": "kernel_animatediff.motion_adapter",
    "AnimateDiffPipeline": "kernel_animatediff.pipelines",
    "AnimateDiffPipelineOutput": "kernel_animatediff.pipelines",
    "AnimateDiffVideoToVideoPipeline": "kernel_animatediff.pipelines",
    "UNetMotionModel": "kernel_animatediff.unet_motion",
    "UNetMotionOutput": "kernel_animatediff.unet_motion",
    "AnimateDiffSDXLPipeline": "kernel_animatediff.sdxl",
    "AnimateDiffControlNetPipeline": "kernel_animatediff.controlnet",
    "SparseControlNetModel": "kernel_animatediff.sparse_controlnet",
    "SparseControlNetOutput": "kernel_animatediff.sparse_controlnet",
    "AnimateDiffSparseControlNetPipeline": "kernel_animatediff.sparse_control",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernel_animatediff' has no attribute {name!r}")
