"""Output containers usable as attributes, as a dict, or as a tuple (like Diffusers' ``BaseOutput``)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any


class BaseOutput(OrderedDict):
    """Base for ``@dataclass`` outputs.

    Fields set to ``None`` are left out of the dict/tuple views, so
    ``out[0]`` is always the first field that holds a value and
    ``out.to_tuple()`` matches what ``return_dict=False`` returns.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                super().__setitem__(field.name, value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return dict(self.items())[key]
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        if not dataclasses.is_dataclass(self):
            return super().__reduce__()
        args = tuple(getattr(self, f.name) for f in dataclasses.fields(self))
        return type(self), args

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


def numpy_to_pil(images: Any) -> list:
    """``[B,] H x W x C`` floats in ``[0, 1]`` as a list of PIL images (mode ``L`` for one channel)."""
    from PIL import Image

    as_bytes = ((images[None] if images.ndim == 3 else images) * 255).round().astype("uint8")
    return [Image.fromarray(i[..., 0], mode="L") if i.shape[-1] == 1 else Image.fromarray(i) for i in as_bytes]
