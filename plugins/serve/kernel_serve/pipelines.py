"""The pipelines one device keeps loaded, and running one job's pictures on them.

Pictures come from :func:`kernel_generate.command.render` with the parameters ``kernel generate``
uses, and carry the same ``parameters`` text, so ``kernel generate --from`` reproduces them exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import os
import threading
from pathlib import Path
from typing import Any, Callable

from kernel_serve.models import ModelRef


@dataclasses.dataclass
class Loaded:
    """A pipeline and what requests are checked against: VAE factor, native size, own scheduler."""

    pipe: Any
    scheduler_config: dict
    sampler: str  # the model's own scheduler (its class name, as ``kernel generate`` records it)
    factor: int
    native: tuple[int, int] | None  # (width, height); None when the model does not say


class PipelineCache:
    """Pipelines loaded on one device, reused between jobs (least recently used dropped past ``max_models``)."""

    def __init__(self, device: str | None, dtype: str | None, max_models: int = 2):
        from kernel_generate.command import _device_and_dtype

        self.device, self.torch_dtype, self.dtype_name = _device_and_dtype(device, dtype)
        self.name = str(self.device)
        self.max_models = max_models
        self._loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def peek(self, ref: ModelRef) -> Loaded | None:
        return self._loaded.get(ref.source)

    def get(self, ref: ModelRef) -> Loaded:
        """The pipeline for ``ref``, loaded on first use (``ValueError`` naming the model when it cannot be)."""
        with self._lock:
            if ref.source in self._loaded:
                self._loaded.move_to_end(ref.source)
                return self._loaded[ref.source]
            loaded = self._load(ref)
            self._loaded[ref.source] = loaded
            while len(self._loaded) > self.max_models:
                self._loaded.popitem(last=False)
                gc.collect()
                if self.device.type == "cuda":
                    import torch

                    torch.cuda.empty_cache()
            return loaded

    def _load(self, ref: ModelRef) -> Loaded:
        from kernel_generate.command import _load_pipeline, _native_size, _vae_factor

        pipe = _load_pipeline(ref.name, ref.source, self.torch_dtype, self.device)
        pipe.set_progress_bar_config(disable=True)
        try:
            native = _native_size(pipe)
        except (AttributeError, TypeError):
            native = None  # no ``unet.config.sample_size``: requests must give width and height
        return Loaded(pipe, dict(pipe.scheduler.config), type(pipe.scheduler).__name__, _vae_factor(pipe), native)


def _save_png(image: Any, path: Path, text: str) -> None:
    """Write atomically (temporary file, then rename): a reader never sees half a picture."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def run_pictures(loaded: Loaded, params: dict, *, model_name: str, dtype_name: str, outputs: Path, stem: str,
                 cancelled: Callable[[], bool], progress: Callable[[float], None],
                 saved: list[dict[str, str]]) -> None:
    """Draw the job's ``batch`` pictures (seeds ``seed, seed + 1, ...``) and save them as ``stem-K.png``.

    ``cancelled()`` is polled at every step end; when it turns true the engine's interrupt stops the
    loop and the unfinished picture is dropped.  Each saved picture is appended to ``saved`` as
    ``{"file", "parameters"}`` as soon as it is written.
    """
    import kernel
    from kernel_generate.command import format_infotext, infotext_params, render

    pipe = loaded.pipe
    pipe.scheduler = kernel.sampler(params["sampler"], loaded.scheduler_config)
    batch = params["batch"]
    for k in range(batch):
        if cancelled():
            break

        def on_step_end(p, i, t, tensors, k=k):
            progress((k + (i + 1) / max(p.num_timesteps, 1)) / batch)
            if cancelled():
                p._interrupt = True  # the engine's interrupt: the remaining steps are skipped
            return {}

        seed = params["seed"] + k
        image = render(pipe, params["prompt"], params["negative_prompt"], steps=params["steps"],
                       guidance=params["guidance"], seed=seed, width=params["width"], height=params["height"],
                       callback_on_step_end=on_step_end)
        if cancelled():
            break
        text = format_infotext(params["prompt"], params["negative_prompt"], infotext_params(
            steps=params["steps"], sampler=params["sampler"], guidance=params["guidance"], seed=seed,
            width=params["width"], height=params["height"], model=model_name, dtype=dtype_name))
        name = f"{stem}-{k}.png"
        _save_png(image, outputs / name, text)
        saved.append({"file": name, "parameters": text})
        progress((k + 1) / batch)
