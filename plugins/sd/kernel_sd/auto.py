"""Task-picking pipelines: ``AutoPipelineForText2Image`` / ``ForImage2Image`` / ``ForInpainting``.

``from_pretrained(folder)`` reads ``model_index.json``'s ``_class_name`` and builds that
family's pipeline for the task; ``from_pipe(pipe)`` switches an existing pipeline to the task,
sharing its modules.  The task variant of a class is found by name - ``XPipeline``,
``XImg2ImgPipeline``, ``XInpaintPipeline`` - through the plugin registry, so any family whose
plugin registers those three names works (Stable Diffusion, SDXL, SD3, Flux, ...).  ``enable_pag=True``
picks the perturbed-attention variant (``XPAGPipeline``, ``XPAGImg2ImgPipeline``, ...), ``False`` the
plain one; left out, the source's choice is kept.  ``controlnet=`` does the same for the ControlNet
variant (``XControlNetPipeline``, ``XControlNetPAGImg2ImgPipeline``, ...): a net (or a list of nets) picks
it and is passed on as the component, ``None`` goes back to the plain pipeline (a ``ControlNetUnionModel``
asks for the ``XControlNetUnion...`` classes).
"""

from __future__ import annotations

from typing import Any

from kernel.pipeline import DiffusionPipeline

_TASK_SUFFIX = {"text2image": "Pipeline", "image2image": "Img2ImgPipeline", "inpainting": "InpaintPipeline"}
#: SD3's ControlNet inpainting class is spelt ``...InpaintingPipeline``: tried when ``...InpaintPipeline`` is not.
_INPAINT, _INPAINTING = "InpaintPipeline", "InpaintingPipeline"
_CONTROLNET_INFIXES = ("ControlNetUnion", "ControlNet")


def task_class_name(class_name: str, task: str, pag: bool | None = None, controlnet: bool | str | None = None) -> str:
    """``StableDiffusionXLImg2ImgPipeline`` + ``inpainting`` -> ``StableDiffusionXLInpaintPipeline``;
    with ``pag=True`` -> ``StableDiffusionXLPAGInpaintPipeline``, with ``controlnet=True`` ->
    ``StableDiffusionXLControlNetInpaintPipeline`` (a string is the infix to use, e.g. ``"ControlNetUnion"``;
    ``False`` drops it; ``None`` keeps the source's choice, for both)."""
    if not class_name.endswith("Pipeline"):
        raise ValueError(f"{class_name!r} is not a pipeline class name")
    stem = class_name[: -len("Pipeline")]
    combined = stem.endswith("Combined")  # Kandinsky's prior + decoder: KandinskyV22Img2ImgCombinedPipeline
    if combined:
        stem = stem[: -len("Combined")]
    for suffix in ("Img2Img", "Inpainting", "Inpaint"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    is_pag = stem.endswith("PAG")
    if is_pag:
        stem = stem[: -len("PAG")]
    infix = next((i for i in _CONTROLNET_INFIXES if stem.endswith(i)), "")
    stem = stem[: len(stem) - len(infix)]
    if controlnet is not None:
        infix = controlnet if isinstance(controlnet, str) else ("ControlNet" if controlnet else "")
    suffix = _TASK_SUFFIX[task]
    if combined:
        suffix = suffix[: -len("Pipeline")] + "CombinedPipeline"
    return stem + infix + ("PAG" if (is_pag if pag is None else pag) else "") + suffix


def controlnet_infix(controlnet) -> str:
    """The class-name infix a ``controlnet=`` argument asks for: ``""`` for None, ``ControlNetUnion`` for a
    ``ControlNetUnionModel``, a ``MultiControlNetUnionModel`` or a list of union nets, else ``ControlNet`` (one net
    of any family, a list of nets, a multi-net)."""
    if controlnet is None:
        return ""
    nets = list(controlnet) if isinstance(controlnet, (list, tuple)) else [controlnet]
    union = ("ControlNetUnionModel", "MultiControlNetUnionModel")
    return "ControlNetUnion" if nets and all(type(n).__name__ in union for n in nets) else "ControlNet"


class _AutoPipeline(DiffusionPipeline):
    _is_auto = True
    _task = "text2image"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is not built directly; use {type(self).__name__}.from_pretrained(...) "
                        f"or {type(self).__name__}.from_pipe(pipeline)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any) -> DiffusionPipeline:
        """The task's pipeline of the folder's family (``enable_pag`` picks the PAG variant, ``controlnet``
        the ControlNet one)."""
        from kernel.hub import split_hub_kwargs
        from kernel.registry import get_registry

        enable_pag = kwargs.pop("enable_pag", None)
        controlnet = cls._controlnet_choice(kwargs)
        index = cls.load_model_index(pretrained_model_name_or_path, **split_hub_kwargs(dict(kwargs)))
        source = get_registry().resolve(cls._class_name_of(index))
        return cls._select(source, enable_pag, controlnet).from_pretrained(pretrained_model_name_or_path, **kwargs)

    @staticmethod
    def _controlnet_choice(kwargs: dict) -> str | None:
        """The ControlNet infix ``kwargs`` asks for (None: no ``controlnet`` argument); a ``controlnet=None``
        asking for the plain pipeline is taken out of ``kwargs``, a net stays in as the component."""
        if "controlnet" not in kwargs:
            return None
        if kwargs["controlnet"] is None:
            del kwargs["controlnet"]
            return ""
        return controlnet_infix(kwargs["controlnet"])

    @staticmethod
    def _class_name_of(index: dict) -> str:
        name = index.get("_class_name")
        if not isinstance(name, str):
            raise ValueError("model_index.json has no '_class_name' naming the pipeline class")
        return name

    @classmethod
    def _select(cls, pipeline_cls: type, enable_pag: bool | None = None, controlnet: bool | str | None = None) -> type:
        from kernel.registry import get_registry

        wanted = task_class_name(pipeline_cls.__name__, cls._task, enable_pag, controlnet)
        registry = get_registry()
        if not registry.has(wanted) and wanted.endswith(_INPAINT):
            other = wanted[: -len(_INPAINT)] + _INPAINTING
            wanted = other if registry.has(other) or other == pipeline_cls.__name__ else wanted
        if wanted == pipeline_cls.__name__:
            return pipeline_cls
        if not registry.has(wanted):
            raise ValueError(f"{cls.__name__} cannot run {pipeline_cls.__name__} as {cls._task}: no installed "
                             f"plugin provides {wanted}")
        return registry.resolve(wanted)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, enable_pag: bool | None = None,
                  **overrides: Any) -> DiffusionPipeline:
        """The task's pipeline of ``pipeline``'s family, sharing its components (``controlnet=`` picks or
        drops the ControlNet variant, as in :meth:`from_pretrained`)."""
        target = cls._select(type(pipeline), enable_pag, cls._controlnet_choice(overrides))
        return target.from_pipe(pipeline, **overrides)


class AutoPipelineForText2Image(_AutoPipeline):
    _task = "text2image"


class AutoPipelineForImage2Image(_AutoPipeline):
    _task = "image2image"


class AutoPipelineForInpainting(_AutoPipeline):
    _task = "inpainting"
