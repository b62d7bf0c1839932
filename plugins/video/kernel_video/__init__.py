"""Video I/O for kernel: ``export_to_video`` / ``export_to_gif`` / ``load_video`` and ``VideoProcessor``."""

from kernel_video.export import export_to_gif, export_to_video, load_video
from kernel_video.processor import VideoProcessor

__all__ = ["VideoProcessor", "export_to_gif", "export_to_video", "load_video"]
