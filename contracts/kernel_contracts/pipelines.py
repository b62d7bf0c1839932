"""Pipeline contracts (:class:`kernel.protocols.Pipeline`).

The plugin supplies a tiny pipeline (``component``: a factory) and
``contract_inputs(pipe, batch_size, generator)`` returning call arguments for a fast run (tiny
size, 2 steps).  Declarations: ``invalid_inputs`` (a list of argument overrides that must raise
``ValueError``; default: ``num_images_per_prompt=0`` and an unknown ``output_type``).
Each contract runs a few whole generations, so these are example-free (one run each).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel_contracts.engine import NotApplicable, Subject, contract

DEFAULT_INVALID = ({"num_images_per_prompt": 0}, {"output_type": "not-an-output-type"})


def _pipe(subject: Subject) -> Any:
    pipe = subject.cached("pipeline", subject.instance)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(subject: Subject, opts: dict, pipe: Any, batch_size: int = 1, seed: int = 0, **overrides: Any) -> dict:
    hook = opts.get("contract_inputs") or opts.get("inputs")
    if hook is None:
        raise NotApplicable("the plugin declares no call arguments (contract_inputs / inputs=)")
    gen = torch.Generator().manual_seed(seed)
    return {**hook(pipe, batch_size, gen), **overrides}


def _images(out: Any) -> Any:
    for key in ("images", "frames", "audios", "audio"):
        if hasattr(out, key):
            return getattr(out, key)
    return out[0]


def _count(images: Any) -> int:
    return len(images) if isinstance(images, list) else int(images.shape[0])


def _np(images: Any) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        return images.float().cpu().numpy()
    return np.asarray(images)


@contract("pipeline", "output_types")
def output_types(subject: Subject, ex: Any, opts: dict) -> None:
    """``output_type`` ``pil``, ``np``, ``pt`` and ``latent`` all work and give one item per image."""
    pipe = _pipe(subject)
    for output_type, check in (
        ("pil", lambda x: isinstance(x, list) and hasattr(x[0], "size")),
        ("np", lambda x: isinstance(x, np.ndarray)),
        ("pt", lambda x: isinstance(x, torch.Tensor)),
        ("latent", lambda x: isinstance(x, torch.Tensor)),
    ):
        images = _images(pipe(**_inputs(subject, opts, pipe, 1, output_type=output_type)))
        assert check(images), f"output_type={output_type!r} returned {type(images).__name__}"
        assert _count(images) == 1, f"output_type={output_type!r}: {_count(images)} items for one prompt"


@contract("pipeline", "num_images_per_prompt")
def num_images_per_prompt(subject: Subject, ex: Any, opts: dict) -> None:
    """``num_images_per_prompt=k`` gives ``k`` images per prompt."""
    pipe = _pipe(subject)
    images = _images(pipe(**_inputs(subject, opts, pipe, 1, output_type="np", num_images_per_prompt=2)))
    assert _count(images) == 2, f"num_images_per_prompt=2 gave {_count(images)} images"


@contract("pipeline", "same_seed_same_output")
def same_seed_same_output(subject: Subject, ex: Any, opts: dict) -> None:
    """The same generator seed gives the same output."""
    pipe = _pipe(subject)
    a = _np(_images(pipe(**_inputs(subject, opts, pipe, 1, seed=3, output_type="np"))))
    b = _np(_images(pipe(**_inputs(subject, opts, pipe, 1, seed=3, output_type="np"))))
    assert np.array_equal(a, b), f"same seed, outputs differ by {np.abs(a - b).max():.3g}"


@contract("pipeline", "generator_list_per_item")
def generator_list_per_item(subject: Subject, ex: Any, opts: dict) -> None:
    """With a list of generators, item ``i`` depends only on generator ``i``."""
    pipe = _pipe(subject)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    a = _np(_images(pipe(**_inputs(subject, opts, pipe, 2, output_type="np", generator=gens([1, 2])))))
    b = _np(_images(pipe(**_inputs(subject, opts, pipe, 2, output_type="np", generator=gens([1, 5])))))
    assert np.array_equal(a[0], b[0]), "item 0 changed when only generator 1 changed"
    assert not np.array_equal(a[1], b[1]), "item 1 did not change when its generator changed"


@contract("pipeline", "callback_on_step_end")
def callback_on_step_end(subject: Subject, ex: Any, opts: dict) -> None:
    """``callback_on_step_end`` sees every step, and setting ``pipe._interrupt`` stops the loop."""
    pipe = _pipe(subject)
    seen: list[int] = []

    def record(p, step, timestep, kwargs):
        seen.append(step)
        return kwargs

    inputs = _inputs(subject, opts, pipe, 1, output_type="latent", callback_on_step_end=record)
    pipe(**inputs)
    steps = inputs.get("num_inference_steps")
    assert seen and seen == list(range(len(seen))), f"callback saw steps {seen}"
    if steps is not None:
        assert len(seen) == steps, f"callback saw {len(seen)} steps for num_inference_steps={steps}"
    stopped: list[int] = []

    def interrupt(p, step, timestep, kwargs):
        stopped.append(step)
        p._interrupt = True
        return kwargs

    pipe(**_inputs(subject, opts, pipe, 1, output_type="latent", callback_on_step_end=interrupt))
    pipe._interrupt = False
    assert len(stopped) == 1, f"after interrupting at step 0 the callback still ran for steps {stopped}"


@contract("pipeline", "invalid_arguments_raise")
def invalid_arguments_raise(subject: Subject, ex: Any, opts: dict) -> None:
    """Invalid arguments raise ``ValueError``."""
    pipe = _pipe(subject)
    for bad in opts.get("invalid_inputs", DEFAULT_INVALID):
        try:
            pipe(**_inputs(subject, opts, pipe, 1, **bad))
        except ValueError:
            continue
        raise AssertionError(f"{bad} did not raise ValueError")
