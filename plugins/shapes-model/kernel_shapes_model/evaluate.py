"""Score a text-to-image pipeline on held-out shapes captions with the detector.

For each held-out scene the pipeline draws its caption; :func:`kernel_shapes_model.detect.detect`
measures the picture; the score of an attribute is the fraction of pictures where the detector
reads back what the caption asked for.  The captions' (colour, shape, position, background)
combinations never occur in training (see :func:`kernel_shapes_model.data.held_out_combos`).
"""

from __future__ import annotations

import time
from typing import Any

from kernel_shapes_model.data import Scene, held_out_scenes
from kernel_shapes_model.detect import detect

ATTRIBUTES = ("colour", "shape", "position", "size", "background")


def evaluate(pipe: Any, count: int = 100, steps: int = 20, guidance: float = 5.0, seed: int = 0,
             batch_size: int = 20, scenes: list[Scene] | None = None, keep_images: bool = False) -> dict:
    """Accuracy per attribute (and overall) of ``pipe`` on ``count`` held-out captions."""
    import torch

    scenes = scenes or held_out_scenes(count, seed=seed)
    hits = {a: 0 for a in ATTRIBUTES}
    all_ok = 0
    rows, images = [], []
    start = time.perf_counter()
    for first in range(0, len(scenes), batch_size):
        chunk = scenes[first: first + batch_size]
        prompts = [s.caption() for s in chunk]
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(len(chunk))]
        with torch.inference_mode():
            out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators)
        for scene, image in zip(chunk, out.images):
            found = detect(image)
            ok = found.matches(scene)
            for a in ATTRIBUTES:
                hits[a] += ok[a]
            all_ok += all(ok.values())
            rows.append({"caption": scene.caption(), "detected": found.__dict__, "correct": ok})
            if keep_images:
                images.append(image)
    n = len(scenes)
    result = {a: hits[a] / n for a in ATTRIBUTES}
    result.update(all=all_ok / n, count=n, steps=steps, guidance=guidance, seed=seed,
                  seconds=round(time.perf_counter() - start, 2), rows=rows)
    if keep_images:
        result["images"] = images
    return result
