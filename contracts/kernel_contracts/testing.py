"""Helpers for plugin tests: compare a component against a reference implementation, build test inputs.

The reference is passed in (tests use Diffusers as the oracle); this module imports no
reference library itself.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch


def fake_model_output(sample: torch.Tensor, t: Any, i: int) -> torch.Tensor:
    """A smooth, deterministic stand-in for a model: depends on the sample, the timestep and the step."""
    t_val = float(t) if not isinstance(t, torch.Tensor) else float(t.float().mean())
    return 0.3 * sample + 0.05 * torch.sin(torch.arange(sample.numel(), dtype=sample.dtype).reshape(sample.shape)
                                           + t_val / 100.0 + i)


def _call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    params = inspect.signature(fn).parameters
    accepts_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in kwargs.items() if accepts_var_kw or k in params}
    return fn(*args, **kwargs)


def scheduler_parity(
    ours: Any,
    theirs: Any,
    num_inference_steps: int | None,
    *,
    shape: tuple[int, ...] = (2, 3, 8, 8),
    seed: int = 0,
    atol: float = 1e-5,
    set_timesteps_kwargs: dict | None = None,
    step_kwargs: dict | None = None,
    model: Callable[[torch.Tensor, Any, int], torch.Tensor] = fake_model_output,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Run the same denoising loop through two schedulers and assert equal timesteps and samples.

    Both schedulers get the same ``set_timesteps`` arguments, the same model outputs and
    identically seeded generators.  Returns the number of steps compared.
    """
    set_kwargs = dict(set_timesteps_kwargs or {})
    if num_inference_steps is not None:
        set_kwargs["num_inference_steps"] = num_inference_steps
    ours.set_timesteps(**set_kwargs)
    theirs.set_timesteps(**set_kwargs)
    t_ours, t_theirs = ours.timesteps, theirs.timesteps
    assert len(t_ours) == len(t_theirs), f"timestep count {len(t_ours)} != reference {len(t_theirs)}"
    torch.testing.assert_close(
        torch.as_tensor(t_ours).double(), torch.as_tensor(t_theirs).double(), atol=1e-4, rtol=0,
        msg=lambda m: f"timesteps differ: ours={list(t_ours)} ref={list(t_theirs)}\n{m}",
    )
    for attr in ("sigmas",):
        if hasattr(theirs, attr) and isinstance(getattr(theirs, attr), torch.Tensor) and hasattr(ours, attr):
            torch.testing.assert_close(
                torch.as_tensor(getattr(ours, attr)).double(), getattr(theirs, attr).double(), atol=1e-5, rtol=1e-5
            )
    assert float(ours.init_noise_sigma) == float(theirs.init_noise_sigma) or abs(
        float(ours.init_noise_sigma) - float(theirs.init_noise_sigma)
    ) < 1e-4 * max(1.0, float(theirs.init_noise_sigma))

    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(shape, generator=g, dtype=dtype) * float(theirs.init_noise_sigma)
    s_ours, s_theirs = sample.clone(), sample.clone()
    gen_ours = torch.Generator().manual_seed(seed + 1)
    gen_theirs = torch.Generator().manual_seed(seed + 1)
    for i, (ta, tb) in enumerate(zip(t_ours, t_theirs)):
        in_ours = ours.scale_model_input(s_ours, ta)
        in_theirs = theirs.scale_model_input(s_theirs, tb)
        torch.testing.assert_close(in_ours, in_theirs, atol=atol, rtol=0, msg=lambda m: f"scale_model_input step {i}: {m}")
        out = model(in_theirs, tb, i)
        kw = dict(step_kwargs or {})
        res_ours = _call(ours.step, out, ta, s_ours, generator=gen_ours, return_dict=True, **kw)
        res_theirs = _call(theirs.step, out, tb, s_theirs, generator=gen_theirs, return_dict=True, **kw)
        torch.testing.assert_close(
            res_ours.prev_sample, res_theirs.prev_sample, atol=atol, rtol=0, msg=lambda m: f"prev_sample step {i}: {m}"
        )
        ref_x0 = getattr(res_theirs, "pred_original_sample", None)
        if ref_x0 is not None and getattr(res_ours, "pred_original_sample", None) is not None:
            torch.testing.assert_close(res_ours.pred_original_sample, ref_x0, atol=atol, rtol=0)
        s_ours, s_theirs = res_ours.prev_sample, res_theirs.prev_sample
    return len(t_theirs)


def add_noise_parity(ours: Any, theirs: Any, shape=(2, 3, 8, 8), atol: float = 1e-5) -> None:
    """``add_noise`` at a few timesteps of the current schedule gives the same tensors."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(shape, generator=g)
    noise = torch.randn(shape, generator=g)
    ts = theirs.timesteps
    picks = [ts[0], ts[len(ts) // 2], ts[-1]]
    for t in picks:
        t_batch = torch.stack([t] * shape[0]) if isinstance(t, torch.Tensor) else torch.tensor([t] * shape[0])
        a = ours.add_noise(x0, noise, t_batch.clone())
        b = theirs.add_noise(x0, noise, t_batch.clone())
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def config_kwargs_for(cls: type, config: dict) -> dict:
    """Keep only the keys ``cls.__init__`` takes (for building a reference with the same config)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params}


def assert_matches_reference_api(
    ours: type,
    reference: type,
    methods: tuple[str, ...] = ("__init__", "set_timesteps", "step"),
    *,
    ordered_compatibles: bool = False,
) -> None:
    """``ours`` takes the reference's parameters (same names, same order; same ``__init__`` defaults),
    lists the same ``_compatibles`` and, built with defaults, holds the same config."""
    for name in methods:
        ours_p = inspect.signature(getattr(ours, name)).parameters
        ref_p = inspect.signature(getattr(reference, name)).parameters
        assert list(ours_p) == list(ref_p), name
        if name == "__init__":
            assert all(ours_p[k].default == p.default for k, p in ref_p.items() if k != "self")
    if ordered_compatibles:
        assert list(ours._compatibles) == list(reference._compatibles)
    else:
        assert set(ours._compatibles) == set(reference._compatibles)
    assert_same_config(ours(), reference())


def assert_same_config(ours: Any, theirs: Any) -> None:
    """Both configs hold the same keys and values (the reference's private ``_`` keys aside)."""
    assert dict(ours.config) == {k: v for k, v in theirs.config.items() if not k.startswith("_")}


def run_meta_loop(scheduler: Any, shape: tuple[int, ...], num_inference_steps: int = 12) -> torch.Tensor:
    """Run a whole loop on the meta device and check it finished; returns the final sample.

    A meta tensor has no values, so any read of a device value inside ``step`` (``.item()``, a
    ``nonzero`` search, a device-to-host copy) raises: a loop that completes reads none.
    """
    scheduler.set_timesteps(num_inference_steps, device="meta")
    x = torch.empty(shape, device="meta")
    for t in scheduler.timesteps:
        x = scheduler.step(torch.tanh(scheduler.scale_model_input(x, t)), t, x).prev_sample
    assert x.device.type == "meta" and x.shape == shape and scheduler.step_index == len(scheduler.timesteps)
    return x


def assert_begin_index_stored(scheduler: Any, *set_timesteps_args: Any, **set_timesteps_kwargs: Any) -> None:
    """``set_begin_index`` checks and records its argument as ``begin_index``; ``set_timesteps`` clears it.

    For schedulers that locate every step by its timestep (no step counter), where the begin index
    of the Scheduler protocol is only recorded for the pipeline.
    """
    scheduler.set_timesteps(*set_timesteps_args, **set_timesteps_kwargs)
    assert scheduler.begin_index is None, "a fresh schedule should have no begin_index"
    scheduler.set_begin_index(1)
    assert scheduler.begin_index == 1
    for bad in (-1, 1.5, True):
        try:
            scheduler.set_begin_index(bad)
        except ValueError as err:
            assert "begin_index" in str(err), f"the error for begin_index={bad!r} does not name the argument: {err}"
        else:
            raise AssertionError(f"set_begin_index({bad!r}) was accepted")
    assert scheduler.begin_index == 1, "a rejected begin_index changed the stored one"
    scheduler.set_timesteps(*set_timesteps_args, **set_timesteps_kwargs)
    assert scheduler.begin_index is None, "set_timesteps should clear begin_index (a new loop starts at 0)"


def random_image(width: int = 32, height: int = 32, seed: int = 0):
    """A seeded RGB PIL picture of uniform noise (input for image-to-image and inpainting tests)."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def box_mask(width: int = 32, height: int = 32, box: tuple[int, int, int, int] = (8, 8, 24, 20)):
    """An ``"L"`` PIL mask, white (repaint) inside ``box`` = (left, top, right, bottom), black elsewhere."""
    import PIL.Image

    mask = PIL.Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask
