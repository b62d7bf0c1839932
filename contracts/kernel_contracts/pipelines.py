"""Pipeline contracts (:class:`kernel.protocols.Pipeline`).

The plugin supplies a tiny pipeline (``component``: a factory) and
``contract_inputs(pipe, batch_size, generator)`` returning call arguments for a fast run (tiny
size, 2 steps).  Declarations: ``invalid_inputs`` (a list of argument overrides that must raise
``ValueError``; default: ``num_images_per_prompt=0`` and an unknown ``output_type``, each only where
``__call__`` takes that argument), ``output_types`` (the ``output_type`` values the pipeline offers;
default ``("pil", "np", "pt", "latent")``).
Each contract runs a few whole generations, so these are example-free (one run each).

Capabilities are read from the signature of ``__call__``: a pipeline without a
``num_images_per_prompt`` argument (unconditional ones batch with ``batch_size``) or without
``callback_on_step_end`` is not tested for it, and one with ``strength`` (image-to-image,
inpainting) may denoise only the tail of its schedule, so its callback sees at most every step.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from kernel_contracts.engine import NotApplicable, Subject, contract

DEFAULT_INVALID = ({"num_images_per_prompt": 0}, {"output_type": "not-an-output-type"})
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _pipe(subject: Subject) -> Any:
    pipe = subject.cached("pipeline", subject.instance)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(subject: Subject, opts: dict, pipe: Any, batch_size: int = 1, seed: int = 0, /, **overrides: Any) -> dict:
    # Positional-only: ``overrides`` are call arguments, and unconditional pipelines take ``batch_size``.
    hook = opts.get("contract_inputs") or opts.get("inputs")
    if hook is None:
        raise NotApplicable("the plugin declares no call arguments (contract_inputs / inputs=)")
    gen = torch.Generator().manual_seed(seed)
    return {**hook(pipe, batch_size, gen), **overrides}


def accepts(pipe: Any, argument: str) -> bool:
    """Whether ``pipe(...)`` takes ``argument`` (by name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return True
    return argument in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _require(pipe: Any, argument: str) -> None:
    if not accepts(pipe, argument):
        raise NotApplicable(f"{type(pipe).__name__}.__call__ takes no {argument}")


def _fastest_output(opts: dict) -> str:
    """``latent`` where offered (no decoding), else the first declared output type."""
    offered = tuple(opts.get("output_types", OUTPUT_TYPES))
    return "latent" if "latent" in offered else offered[0]


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
    """Every ``output_type`` offered (default ``pil``, ``np``, ``pt``, ``latent``) works, one item per image."""
    pipe = _pipe(subject)
    checks = {
        "pil": lambda x: isinstance(x, list) and hasattr(x[0], "size"),
        "np": lambda x: isinstance(x, np.ndarray),
        "pt": lambda x: isinstance(x, torch.Tensor),
        "latent": lambda x: isinstance(x, torch.Tensor),
    }
    offered = tuple(opts.get("output_types", OUTPUT_TYPES))
    unknown = [t for t in offered if t not in checks]
    if unknown:
        raise ValueError(f"output_types declares {unknown}; accepted values: {', '.join(checks)}")
    for output_type in offered:
        check = checks[output_type]
        images = _images(pipe(**_inputs(subject, opts, pipe, 1, output_type=output_type)))
        assert check(images), f"output_type={output_type!r} returned {type(images).__name__}"
        assert _count(images) == 1, f"output_type={output_type!r}: {_count(images)} items for one prompt"


@contract("pipeline", "num_images_per_prompt")
def num_images_per_prompt(subject: Subject, ex: Any, opts: dict) -> None:
    """``num_images_per_prompt=k`` gives ``k`` images per prompt."""
    pipe = _pipe(subject)
    _require(pipe, "num_images_per_prompt")
    images = _images(pipe(**_inputs(subject, opts, pipe, 1, output_type="np", num_images_per_prompt=2)))
    assert _count(images) == 2, f"num_images_per_prompt=2 gave {_count(images)} images"


@contract("pipeline", "same_seed_same_output")
def same_seed_same_output(subject: Subject, ex: Any, opts: dict) -> None:
    """The same generator seed gives the same output."""
    pipe = _pipe(subject)
    a = _np(_images(pipe(**_inputs(subject, opts, pipe, 1, 3, output_type="np"))))
    b = _np(_images(pipe(**_inputs(subject, opts, pipe, 1, 3, output_type="np"))))
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
    _require(pipe, "callback_on_step_end")
    seen: list[int] = []

    def record(p, step, timestep, kwargs):
        seen.append(step)
        return kwargs

    fast = _fastest_output(opts)
    inputs = _inputs(subject, opts, pipe, 1, output_type=fast, callback_on_step_end=record)
    pipe(**inputs)
    assert seen and seen == list(range(len(seen))), f"callback saw steps {seen}"
    # One call per scheduler timestep (multi-stage solvers have more timesteps than steps).
    timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
    total = len(timesteps) if timesteps is not None else inputs.get("num_inference_steps")
    if total is not None:
        if accepts(pipe, "strength"):  # image-to-image: only the last `strength` part of the schedule runs
            assert len(seen) <= total, f"callback saw {len(seen)} steps for a schedule of {total}"
        else:
            assert len(seen) == total, f"callback saw {len(seen)} steps for a schedule of {total} timesteps"
    stopped: list[int] = []

    def interrupt(p, step, timestep, kwargs):
        stopped.append(step)
        p._interrupt = True
        return kwargs

    pipe(**_inputs(subject, opts, pipe, 1, output_type=fast, callback_on_step_end=interrupt))
    pipe._interrupt = False
    assert len(stopped) == 1, f"after interrupting at step 0 the callback still ran for steps {stopped}"


@contract("pipeline", "invalid_arguments_raise")
def invalid_arguments_raise(subject: Subject, ex: Any, opts: dict) -> None:
    """Invalid arguments raise ``ValueError``."""
    pipe = _pipe(subject)
    invalid = opts.get("invalid_inputs")
    if invalid is None:
        invalid = [bad for bad in DEFAULT_INVALID if all(accepts(pipe, k) for k in bad)]
    if not invalid:
        raise NotApplicable("no invalid arguments are declared and __call__ takes none of the default ones")
    for bad in invalid:
        try:
            pipe(**_inputs(subject, opts, pipe, 1, **bad))
        except ValueError:
            continue
        raise AssertionError(f"{bad} did not raise ValueError")
