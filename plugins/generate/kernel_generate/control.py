"""``kernel generate --control KIND:PATH --controlnet NET``: steer the picture with a ControlNet.

    kernel generate "a bird" --control canny:photo.png --controlnet ./sd-controlnet-canny
    kernel generate "a bird" --control image:edges.png --controlnet lllyasviel/sd-controlnet-canny --control-scale 0.7

``canny:PATH`` makes the edge map from a picture with ``kernel_controlnet.canny`` (the picture is first resized
to the output size, so the edges stay one pixel thin); ``image:PATH`` takes an already prepared control image
(edges, depth, pose, ...) as it is.  The net (a folder or a Hub id of a ``ControlNetModel``,
``SD3ControlNetModel`` or ``FluxControlNetModel``, read from its ``config.json``) turns the model's
pipeline into its ControlNet variant with ``AutoPipelineForText2Image.from_pipe(pipe, controlnet=net)``, so any
family with ControlNet pipelines works (SD 1.x/2.x, SDXL, SD3, Flux).  Needs ``kernel-controlnet``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

KINDS = ("canny", "image")
SINGLE_NETS = ("ControlNetModel", "SD3ControlNetModel", "FluxControlNetModel")
INSTALL = "pip install kernel-controlnet"


def parse_control(spec: str) -> tuple[str, str]:
    """``"canny:edges.png"`` -> ``("canny", "edges.png")``; the kind is one of :data:`KINDS`."""
    kind, sep, path = str(spec).partition(":")
    if not sep or kind not in KINDS or not path:
        raise ValueError(f"--control must be KIND:PATH with KIND one of {', '.join(KINDS)} "
                         f"(e.g. canny:photo.png); got {spec!r}")
    return kind, path


def check_control_options(control: str | None, controlnet: str | None, scale: float | None) -> None:
    """``--control`` and ``--controlnet`` come together; ``--control-scale`` needs them."""
    if (control is None) != (controlnet is None):
        missing = "--controlnet" if controlnet is None else "--control"
        raise ValueError(f"--control and --controlnet go together: {missing} is missing (--control KIND:PATH "
                         "--controlnet FOLDER_OR_HUB_ID)")
    if scale is not None and control is None:
        raise ValueError("--control-scale needs --control and --controlnet")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"--control-scale must be a finite number, got {scale}")
    if control is not None:
        parse_control(control)


def control_image(spec: str, width: int, height: int):
    """The control image ``spec`` describes, as an RGB PIL image (canny: at ``width`` x ``height``)."""
    from PIL import Image

    kind, path = parse_control(spec)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--control {spec!r}: no such file {path!r}")
    try:
        with Image.open(file) as im:
            picture = im.convert("RGB")
    except OSError as err:
        raise ValueError(f"--control {spec!r}: not a readable picture ({err})") from None
    if kind == "image":
        return picture
    try:
        from kernel_controlnet import canny
    except ImportError:
        raise ValueError(f"--control canny needs kernel-controlnet ({INSTALL})") from None
    picture = picture.resize((width, height), resample=Image.Resampling.LANCZOS)
    return canny(picture).convert("RGB")


def controlled_pipeline(pipe: Any, controlnet: str, dtype: Any, device: Any):
    """``pipe``'s ControlNet variant (sharing its modules) with the net loaded from ``controlnet``."""
    import kernel
    from kernel.registry import get_registry

    registry = get_registry()
    if not registry.has("ControlNetModel"):
        raise ValueError(f"--controlnet needs kernel-controlnet ({INSTALL})")
    try:
        name = _net_class_name(controlnet)
        net = kernel.component(name).from_pretrained(controlnet, torch_dtype=dtype)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a missing folder or bad weights: one clear line
        raise ValueError(f"--controlnet {controlnet!r}: cannot load the ControlNet: {err}") from None
    try:
        controlled = kernel.component("AutoPipelineForText2Image").from_pipe(pipe, controlnet=net.to(device))
    except (ValueError, LookupError) as err:
        raise ValueError(f"--controlnet: {type(pipe).__name__} has no ControlNet variant ({err})") from None
    return controlled


def _net_class_name(controlnet: str) -> str:
    """The net's class from its ``config.json`` (``ControlNetModel``, ``SD3ControlNetModel``,
    ``FluxControlNetModel``); union nets, which need a control mode per image, are refused."""
    import json

    from kernel import hub

    try:
        config = json.loads(hub.resolve_file(controlnet, "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--controlnet {controlnet!r}: cannot load the ControlNet: {err}") from None
    name = config.get("_class_name") or "ControlNetModel"
    if name not in SINGLE_NETS:
        raise ValueError(f"--controlnet {controlnet!r} is a {name}; --controlnet takes one of "
                         f"{', '.join(SINGLE_NETS)} (union nets need a control mode per image: use the Python API)")
    return name


def control_call(pipe: Any, image: Any, scale: float | None) -> dict[str, Any]:
    """The ControlNet pipeline's call arguments: the control image under its argument name (``image`` for the
    UNet families, ``control_image`` for SD3 / Flux) and the conditioning scale."""
    name = getattr(pipe, "_control_image_name", "image")
    call = {name: image}
    if scale is not None:
        call["controlnet_conditioning_scale"] = scale
    return call
