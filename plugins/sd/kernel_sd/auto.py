"""Task-picking pipelines: ``AutoPipelineForText2Image`` / ``ForImage2Image`` / ``ForInpainting``.

``from_pretrained(folder)`` reads ``model_index.json``'s ``_class_name`` and builds that
family's pipeline for the task; ``from_pipe(pipe)`` switches an existing pipeline to the task,
sharing its modules.  The task variant of a class is found by name - ``XPipeline``,
``XImg2ImgPipeline``, ``XInpaintPipeline`` - through the plugin registry, so any family whose
plugin registers those three names works (Stable Diffusion, SDXL, SD3, Flux, ...).  ``enable_pag=True``
picks the perturbed-attention variant (``XPAGPipeline``, ``XPAGImg2ImgPipeline``, ...), ``False`` the
plain one; left out, the source's choice is kept.
"""

from __future__ import annotations

from typing import Any

from kernel.pipeline import DiffusionPipeline

_TASK_SUFFIX = {"text2image": "Pipeline", "image2image": "Img2ImgPipeline", "inpainting": "InpaintPipeline"}


def task_class_name(class_name: str, task: str, pag: bool | None = None) -> str:
    """``StableDiffusionXLImg2ImgPipeline`` + ``inpainting`` -> ``StableDiffusionXLInpaintPipeline``;
    with ``pag=True`` -> ``StableDiffusionXLPAGInpaintPipeline`` (``None`` keeps the source's choice)."""
    if not class_name.endswith("Pipeline"):
        raise ValueError(f"{class_name!r} is not a pipeline class name")
    stem = class_name[: -len("Pipeline")]
    for suffix in ("Img2Img", "Inpaint"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    is_pag = stem.endswith("PAG")
    if is_pag:
        stem = stem[: -len("PAG")]
    return stem + ("PAG" if (is_pag if pag is None else pag) else "") + _TASK_SUFFIX[task]


class _AutoPipeline(DiffusionPipeline):
    _is_auto = True
    _task = "text2image"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is not built directly; use {type(self).__name__}.from_pretrained(...) "
                        f"or {type(self).__name__}.from_pipe(pipeline)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any) -> DiffusionPipeline:
        """The task's pipeline of the folder's family (``enable_pag`` picks the PAG variant)."""
        from kernel.hub import split_hub_kwargs
        from kernel.registry import get_registry

        enable_pag = kwargs.pop("enable_pag", None)
        index = cls.load_model_index(pretrained_model_name_or_path, **split_hub_kwargs(dict(kwargs)))
        source = get_registry().resolve(cls._class_name_of(index))
        return cls._select(source, enable_pag).from_pretrained(pretrained_model_name_or_path, **kwargs)

    @staticmethod
    def _class_name_of(index: dict) -> str:
        name = index.get("_class_name")
        if not isinstance(name, str):
            raise ValueError("model_index.json has no '_class_name' naming the pipeline class")
        return name

    @classmethod
    def _select(cls, pipeline_cls: type, enable_pag: bool | None = None) -> type:
        from kernel.registry import get_registry

        wanted = task_class_name(pipeline_cls.__name__, cls._task, enable_pag)
        if wanted == pipeline_cls.__name__:
            return pipeline_cls
        registry = get_registry()
        if not registry.has(wanted):
            raise ValueError(f"{cls.__name__} cannot run {pipeline_cls.__name__} as {cls._task}: no installed "
                             f"plugin provides {wanted}")
        return registry.resolve(wanted)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, enable_pag: bool | None = None,
                  **overrides: Any) -> DiffusionPipeline:
        """The task's pipeline of ``pipeline``'s family, sharing its components."""
        target = cls._select(type(pipeline), enable_pag)
        return target.from_pipe(pipeline, **overrides)


class AutoPipelineForText2Image(_AutoPipeline):
    _task = "text2image"


class AutoPipelineForImage2Image(_AutoPipeline):
    _task = "image2image"


class AutoPipelineForInpainting(_AutoPipeline):
    _task = "inpainting"
