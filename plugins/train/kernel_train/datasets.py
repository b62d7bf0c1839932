"""Image/caption datasets for the training scripts.

``--dataset`` takes either

* a folder of images with a ``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}`` per
  line, the layout of Hugging Face ``imagefolder``), or
* the name of a dataset a plugin provides through the ``kernel.datasets`` entry-point group
  (``shapes`` comes with ``kernel-shapes-model``): ``name = "module:factory"``, where
  ``factory(length=..., resolution=..., seed=...)`` returns an indexable dataset of
  ``{"image": PIL.Image, "text": str}`` items.

Items are turned into tensors in [-1, 1] (``[3, H, W]``); pictures are resized (shorter side)
and centre-cropped to the training resolution.  No random flips: captions may say "left".
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ENTRY_POINT_GROUP = "kernel.datasets"


class ImageFolderDataset:
    def __init__(self, folder: str | Path, resolution: int):
        self.folder = Path(folder)
        meta = self.folder / "metadata.jsonl"
        if not meta.is_file():
            raise FileNotFoundError(f"dataset folder {self.folder} has no metadata.jsonl "
                                    "(one {\"file_name\": ..., \"text\": ...} object per line)")
        self.rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
        for i, row in enumerate(self.rows):
            if "file_name" not in row or "text" not in row:
                raise ValueError(f"{meta} line {i + 1} needs 'file_name' and 'text', got {sorted(row)}")
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        with Image.open(self.folder / row["file_name"]) as im:
            image = im.convert("RGB")
        return {"image": image, "text": row["text"]}


def dataset_names() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_dataset(spec: str, resolution: int, length: int | None = None, seed: int = 0) -> Any:
    if Path(spec).is_dir():
        return ImageFolderDataset(spec, resolution)
    names = dataset_names()
    if spec not in names:
        raise ValueError(f"--dataset {spec!r} is neither a folder nor a dataset name; installed datasets: "
                         f"{sorted(names) or 'none'} (the 'shapes' dataset comes with kernel-shapes-model)")
    factory = names[spec].load()
    kwargs: dict[str, Any] = {"resolution": resolution, "seed": seed}
    if length is not None:
        kwargs["length"] = length
    return factory(**kwargs)


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize (shorter side) + centre crop to ``resolution``; ``[3, H, W]`` float in [-1, 1]."""
    w, h = image.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                             Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def pixel_tensor(dataset: Any, resolution: int, indices: list[int] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Every (or the given) item as one ``[N, 3, H, W]`` tensor plus the captions."""
    indices = list(range(len(dataset))) if indices is None else indices
    pixels, texts = [], []
    for i in indices:
        item = dataset[i]
        pixels.append(to_tensor(item["image"], resolution))
        texts.append(item["text"])
    return torch.stack(pixels), texts
