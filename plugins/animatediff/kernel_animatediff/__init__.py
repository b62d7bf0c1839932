"""AnimateDiff for kernel: motion adapters, the motion UNet and the text/video-to-video, SDXL and ControlNet
pipelines, and SparseCtrl (SparseControlNetModel) for it."""

from kernel_animatediff.free_init import FreeInitMixin
from kernel_animatediff.free_noise import FreeNoiseMixin
from kernel_animatediff.motion_adapter import MotionAdapter
from kernel_animatediff.pipelines import AnimateDiffPipeline, AnimateDiffPipelineOutput, AnimateDiffVideoToVideoPipeline
from kernel_animatediff.unet_motion import UNetMotionModel, UNetMotionOutput
from kernel_animatediff.sdxl import AnimateDiffSDXLPipeline
from kernel_animatediff.controlnet import AnimateDiffControlNetPipeline
from kernel_animatediff.sparse_controlnet import SparseControlNetModel, SparseControlNetOutput
from kernel_animatediff.sparse_control import AnimateDiffSparseControlNetPipeline

__all__ = ["AnimateDiffControlNetPipeline", "AnimateDiffPipeline", "AnimateDiffSDXLPipeline", "AnimateDiffSparseControlNetPipeline", "AnimateDiffPipelineOutput", "AnimateDiffVideoToVideoPipeline", "FreeInitMixin",
           "FreeNoiseMixin", "MotionAdapter", "SparseControlNetModel", "SparseControlNetOutput", "UNetMotionModel", "UNetMotionOutput"]
