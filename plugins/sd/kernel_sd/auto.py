"""Task-picking pipelines: ``AutoPipelineForText2Image`` / ``ForImage2Image`` / ``ForInpainting``.

``from_pretrained(folder)`` reads ``model_index.json``'s ``_class_name`` and builds that
family's pipeline for the task; ``from_pipe(pipe)`` switches an existing pipeline to the task,
sharing its modules.  The task variant of a class is found by name - ``XPipeline``,
``XImg2ImgPipeline``, ``XInpaintPipeline`` - through the plugin registry, so any family whose
plugin registers those three names works (Stable Diffusion, SDXL, SD3, Flux, ...).
"""

from __future__ import annotations

from typing import Any

from kernel.pipeline import Pipeline

_TASK_SUFFIX = {"text2image": "Pipeline", "image2image": "Img2ImgPipeline", "inpainting": "InpaintPipeline"}


def task_class_name(class_name: str, task: str) -> str:
    """``StableDiffusionXLImg2ImgPipeline`` + ``inpainting`` -> ``StableDiffusionXLInpaintPipeline``."""
    if not class_name.endswith("Pipeline"):
        raise ValueError(f"{class_name!r} is not a pipeline class name")
    stem = class_name[: -len("Pipeline")]
    for suffix in ("Img2Img", "Inpaint"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem + _TASK_SUFFIX[task]


class _AutoPipeline(Pipeline):
    _is_auto = True
    _task = "text2image"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is not built directly; use {type(self).__name__}.from_pretrained(...) "
                        f"or {type(self).__name__}.from_pipe(pipeline)")

    @classmethod
    def _select(cls, pipeline_cls: type) -> type:
        from kernel.registry import get_registry

        wanted = task_class_name(pipeline_cls.__name__, cls._task)
        if wanted == pipeline_cls.__name__:
            return pipeline_cls
        registry = get_registry()
        if not registry.has(wanted):
            raise ValueError(f"{cls.__name__} cannot run {pipeline_cls.__name__} as {cls._task}: no installed "
                             f"plugin provides {wanted}")
        return registry.resolve(wanted)

    @classmethod
    def from_pipe(cls, pipeline: Pipeline, **overrides: Any) -> Pipeline:
        """The task's pipeline of ``pipeline``'s family, sharing its components."""
        target = cls._select(type(pipeline))
        return target.from_pipe(pipeline, **overrides)


class AutoPipelineForText2Image(_AutoPipeline):
    _task = "text2image"


class AutoPipelineForImage2Image(_AutoPipeline):
    _task = "image2image"


class AutoPipelineForInpainting(_AutoPipeline):
    _task = "inpainting"
