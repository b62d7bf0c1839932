"""The shapes-64 embedded default model: its dataset, detector, tokenizer, recipe, and location.

``kernel generate`` asks the ``kernel.models`` entry-point group for a default model; this
package answers with :func:`model_path`, found in this order:

1. the folder named by the ``KERNEL_SHAPES_MODEL`` environment variable;
2. ``kernel_shapes_model/shapes-64`` inside the installed package (a wheel built for
   distribution copies the model there);
3. ``models/shapes-64`` of the source checkout this package is installed from (editable installs).
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_NAME = "shapes-64"
ENV_VAR = "KERNEL_SHAPES_MODEL"


def model_path() -> Path:
    """The folder of the shapes-64 pipeline; ``FileNotFoundError`` naming the places looked at."""
    here = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates += [here / MODEL_NAME, here.parents[2] / "models" / MODEL_NAME]
    for folder in candidates:
        if (folder / "model_index.json").is_file():
            return folder
    raise FileNotFoundError(f"the {MODEL_NAME} model is not installed (looked in {', '.join(map(str, candidates))}); "
                            f"set {ENV_VAR} to its folder")


def dataset(length: int = 50_000, resolution: int = 64, seed: int = 0):
    """The training split of the shapes dataset (the ``kernel.datasets`` entry point)."""
    from kernel_shapes_model.data import ShapesDataset

    return ShapesDataset("train", length=length, resolution=resolution, seed=seed)


__all__ = ["MODEL_NAME", "model_path", "dataset"]
