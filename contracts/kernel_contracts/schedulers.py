"""Scheduler contracts: the invariants of :class:`kernel.protocols.Scheduler`.

Examples are drawn from the class's own config keys (``prediction_type``, ``timestep_spacing``,
``beta_schedule`` and the sigma-spacing switches, whichever ``__init__`` takes), a step count in
``1..50``, a sample shape (3-D to 5-D, tiny) and a seed.  A config the scheduler rejects with
``ValueError`` (at construction, in ``set_timesteps`` or on its first step) is not a valid example.

Schedulers differ only through what they expose, never through their class:

* ``order`` (after ``set_timesteps``): ``1`` means one model evaluation per step,
  ``k > 1`` a multi-stage solver with ``k * (n - 1) + 1`` timesteps (Heun: ``2n - 1``); a loop
  that starts mid-schedule starts at a multiple of ``order`` (``set_begin_index``);
* flow matching (``prediction_type == "flow_prediction"``, or no ``prediction_type`` and all
  ``sigmas`` in ``[0, 1]``): timesteps lie in ``[0, num_train_timesteps]``, noise is added with
  ``add_noise`` or ``scale_noise``, and the exact model output is ``noise - x0``;
* stochastic: two loops with differently seeded generators differ (detected by running them);
* half precision: a scheduler whose ``step`` runs on fp16/bf16 must keep that dtype.

Plugin declarations (``check(..., **options)`` or attributes of a ``SchedulerContract`` class):
``config`` (base config), ``config_space`` (``{key: [values]}`` merged into the drawn keys;
``None`` removes a key), ``timestep_range`` (``(lo, hi)``, inclusive), ``timestep_order``
(``"descending"`` or ``"ascending"``), ``evaluations`` (``f(n, order) -> len(timesteps)``),
``stochastic`` (declare it when the noise is seeded by the config rather than a generator),
``half_precision`` (``True``: must work; ``False``: not claimed; unset: claimed if it runs),
``prediction_type`` / ``exact_model_output`` (``f(prediction_type, model_input, t, x0, noise)``)
for the convergence oracle, ``convergence_tolerance``, ``max_steps``.
"""

from __future__ import annotations

import inspect
import json
import math
import tempfile
from typing import Any

import numpy as np
import torch
from hypothesis import reject
from hypothesis import strategies as st

from kernel.config import init_keys
from kernel_sched_common import PREDICTION_TYPES, TIMESTEP_SPACINGS

from kernel_contracts import oracles
from kernel_contracts.engine import NotApplicable, Subject, contract

KIND = "scheduler"

#: Config keys drawn for every scheduler that takes them (first value of each = the default kept).
CONFIG_SPACE: dict[str, tuple] = {
    "prediction_type": PREDICTION_TYPES,
    "timestep_spacing": TIMESTEP_SPACINGS,
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "use_karras_sigmas": (True, False),
    "use_exponential_sigmas": (True, False),
}

_KEEP = "<default>"
_REJECTED = (ValueError, NotImplementedError)


# --------------------------------------------------------------------------- small helpers
def _config_space(subject: Subject, opts: dict) -> dict[str, tuple]:
    keys = set(init_keys(subject.cls))
    space = {k: tuple(v) for k, v in CONFIG_SPACE.items() if k in keys}
    for k, v in (opts.get("config_space") or {}).items():
        if v is None:
            space.pop(k, None)
        else:
            space[k] = tuple(v)
    return space


def _accepts(fn: Any, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def call_step(s: Any, model_output: torch.Tensor, t: Any, sample: torch.Tensor, generator=None) -> torch.Tensor:
    kwargs: dict[str, Any] = {}
    if _accepts(s.step, "generator"):
        kwargs["generator"] = generator
    if _accepts(s.step, "return_dict"):
        kwargs["return_dict"] = True
    out = s.step(model_output, t, sample, **kwargs)
    return out.prev_sample if hasattr(out, "prev_sample") else out[0]


def timesteps_of(s: Any) -> list:
    ts = s.timesteps
    if isinstance(ts, np.ndarray):
        ts = torch.from_numpy(ts)
    return list(ts)


def _as_batch(t: Any, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t.reshape(1).repeat(batch)


def noisify(s: Any, x0: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
    """``add_noise(x0, noise, t)`` at timestep ``t`` (one per batch item); the protocol requires it."""
    if not callable(getattr(s, "add_noise", None)):
        raise AssertionError(
            f"{type(s).__name__} has no add_noise(original_samples, noise, timesteps): the Scheduler protocol "
            "requires it (raise ValueError in it if the scheduler cannot noise a sample)"
        )
    return s.add_noise(x0, noise, _as_batch(t, x0.shape[0]))


def scale_input(s: Any, sample: torch.Tensor, t: Any) -> torch.Tensor:
    """``scale_model_input``; flow-matching schedulers without one feed the sample unchanged."""
    if hasattr(s, "scale_model_input"):
        return s.scale_model_input(sample, t)
    return sample


def fake_model(x: torch.Tensor, t: Any, i: int) -> torch.Tensor:
    """A smooth deterministic stand-in for a network (depends on input, timestep and position)."""
    phase = torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape) * 0.37 + float(torch.as_tensor(t).float()) / 250.0
    return (0.6 * x.float() + 0.3 * torch.sin(phase + i)).to(x.dtype)


def run_loop(s: Any, sample: torch.Tensor, model=fake_model, seed: int | None = 0, check=None,
             start: int = 0) -> torch.Tensor:
    """The plain denoising loop a pipeline runs, from ``timesteps[start]``; ``check(i, t, x_in, out, sample, prev)``
    sees each step."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for i, t in enumerate(timesteps_of(s)[start:], start):
        x_in = scale_input(s, sample, t)
        out = model(x_in, t, i)
        prev = call_step(s, out, t, sample, generator)
        if check is not None:
            check(i, t, x_in, out, sample, prev)
        sample = prev
    return sample


def _num_train(s: Any) -> int:
    return int(s.config.get("num_train_timesteps", 1000) or 1000)


def is_flow(s: Any) -> bool:
    pt = s.config.get("prediction_type")
    if pt is not None:
        return pt == "flow_prediction"
    sigmas = getattr(s, "sigmas", None)
    if sigmas is None or hasattr(s, "alphas_cumprod"):
        return False
    return float(torch.as_tensor(sigmas).max()) <= 1.0 + 1e-6


def _sample(shape: tuple, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def _clean(shape: tuple, seed: int) -> torch.Tensor:
    """A clean sample inside ``[-0.9, 0.9]``, the range ``clip_sample``/thresholding assume for data."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 1.8 - 0.9


def build(subject: Subject, example: dict) -> Any:
    """A fresh scheduler for ``example`` with ``set_timesteps`` already called."""
    s = subject.instance(**example["config"])
    s.set_timesteps(example["steps"])
    return s


def _accepted_step_count(subject: Subject) -> int:
    """8 steps, or the first count the default config accepts (some schedulers take one fixed count)."""
    for n in (8, *range(1, 51)):
        try:
            subject.instance().set_timesteps(n)
        except _REJECTED:
            continue
        return n
    raise NotApplicable("the default config accepts no step count in 1..50")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaNs in the same places counting as equal."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _stochastic(subject: Subject) -> bool:
    """Two loops with differently seeded generators differ (default config, 8 steps)."""

    def probe() -> bool:
        outs = []
        steps = _accepted_step_count(subject)
        for seed in (1, 2):
            s = subject.instance()
            s.set_timesteps(steps)
            x = _sample((2, 3, 4, 4), 0) * float(getattr(s, "init_noise_sigma", 1.0))
            outs.append(run_loop(s, x, seed=seed))
        return not same(outs[0], outs[1])

    return subject.cached("stochastic", probe)


# --------------------------------------------------------------------------- examples
def scheduler_examples(subject: Subject, opts: dict):
    space = _config_space(subject, opts)
    max_steps = int(opts.get("max_steps", 50))
    validity = subject.cached("valid_configs", dict)

    @st.composite
    def example(draw):
        config = {}
        for key, values in space.items():
            value = draw(st.sampled_from((_KEEP, *values)))
            if value is not _KEEP:
                config[key] = value
        steps = draw(st.integers(1, max_steps))
        ndim = draw(st.sampled_from((4, 3, 5)))
        batch = draw(st.integers(1, 3))
        shape = (batch, *draw(st.lists(st.integers(2, 4), min_size=ndim - 1, max_size=ndim - 1)))
        seed = draw(st.integers(0, 2**16))
        example = {"config": config, "steps": steps, "shape": shape, "seed": seed}
        key = json.dumps([config, steps], sort_keys=True, default=str)
        if key not in validity:
            validity[key] = _probe(subject, example)
        if not validity[key]:
            reject()
        return example

    return example()


def _probe(subject: Subject, example: dict) -> bool:
    """Does the scheduler accept this config (construction, set_timesteps, a first step)?"""
    try:
        s = build(subject, example)
        ts = timesteps_of(s)
        x = torch.zeros(1, 2, 2, 2)
        call_step(s, scale_input(s, x, ts[0]), ts[0], x, torch.Generator().manual_seed(0))
    except _REJECTED:
        return False
    except Exception:  # noqa: BLE001 - other errors are bugs; let the contract report them
        return True
    return True


# --------------------------------------------------------------------------- contracts
@contract(KIND, "timestep_count", examples=scheduler_examples)
def timestep_count(subject: Subject, ex: dict, opts: dict) -> None:
    """``len(timesteps)`` is ``n`` for one-stage solvers and ``order * (n - 1) + 1`` for multi-stage ones."""
    s = build(subject, ex)
    n, order = ex["steps"], int(getattr(s, "order", 1))
    rule = opts.get("evaluations") or (lambda n, order: n if order == 1 else order * (n - 1) + 1)
    expected = rule(n, order)
    got = len(timesteps_of(s))
    assert got == expected, f"set_timesteps({n}) gave {got} timesteps; expected {expected} for order={order}"


@contract(KIND, "timestep_range", examples=scheduler_examples)
def timestep_range(subject: Subject, ex: dict, opts: dict) -> None:
    """Every timestep lies in ``[0, num_train_timesteps)`` (``[0, num_train_timesteps]`` for flow matching)."""
    s = build(subject, ex)
    ts = torch.as_tensor(np.asarray([float(t) for t in timesteps_of(s)]))
    if "timestep_range" in opts:
        lo, hi = opts["timestep_range"]
        ok = bool(((ts >= lo) & (ts <= hi)).all())
        where = f"[{lo}, {hi}]"
    else:
        n_train = _num_train(s)
        top_ok = ts <= n_train if is_flow(s) else ts < n_train
        ok = bool(((ts >= 0) & top_ok).all())
        where = f"[0, {n_train}]" if is_flow(s) else f"[0, {n_train})"
    assert ok, f"timesteps outside {where}: {ts.tolist()}"
    assert bool(torch.isfinite(ts).all()), f"non-finite timesteps: {ts.tolist()}"


@contract(KIND, "timestep_order", examples=scheduler_examples)
def timestep_order(subject: Subject, ex: dict, opts: dict) -> None:
    """``timesteps`` is non-increasing (non-decreasing when the plugin declares ``timestep_order='ascending'``)."""
    s = build(subject, ex)
    ts = np.asarray([float(t) for t in timesteps_of(s)])
    diffs = np.diff(ts)
    if opts.get("timestep_order", "descending") == "ascending":
        assert (diffs >= 0).all(), f"timesteps are not non-decreasing: {ts.tolist()}"
    else:
        assert (diffs <= 0).all(), f"timesteps are not non-increasing: {ts.tolist()}"


def _loop_preserves(subject: Subject, ex: dict, dtype: torch.dtype, from_middle: bool = False) -> None:
    s = build(subject, ex)
    x = _sample(ex["shape"], ex["seed"], dtype) * float(getattr(s, "init_noise_sigma", 1.0) or 1.0)
    start = _begin_at(s, len(timesteps_of(s)) // 2) if from_middle else 0

    def check(i, t, x_in, out, sample, prev):
        assert x_in.shape == sample.shape, f"step {i}: scale_model_input changed the shape {tuple(sample.shape)} -> {tuple(x_in.shape)}"
        assert x_in.dtype == dtype, f"step {i}: scale_model_input returned {x_in.dtype} for {dtype} input"
        assert prev.shape == sample.shape, f"step {i}: step changed the shape {tuple(sample.shape)} -> {tuple(prev.shape)}"
        assert prev.dtype == dtype, f"step {i}: step returned {prev.dtype} for a {dtype} sample"
        assert bool(torch.isfinite(prev).all()), f"step {i} (t={float(torch.as_tensor(t))}) returned non-finite values"

    run_loop(s, x, seed=ex["seed"], check=check, start=start)


def _begin_at(s: Any, start: int) -> int:
    """``set_begin_index`` at the step boundary at or below ``start``; checks it is there and reported.

    Pipelines pass ``t_start * order``; a scheduler whose steps have varying numbers of stages
    refuses an index inside a step with ``ValueError``, and the next lower boundary is tried.
    """
    if not callable(getattr(s, "set_begin_index", None)):
        raise AssertionError(
            f"{type(s).__name__} has no set_begin_index(begin_index=0): the Scheduler protocol requires it "
            "(pipelines call it to start image-to-image mid-schedule)"
        )
    order = int(getattr(s, "order", 1) or 1)
    for start in range(start // order * order, -1, -order):
        try:
            s.set_begin_index(start)
        except ValueError:
            if start == 0:
                raise
            continue
        break
    if hasattr(s, "begin_index"):
        assert s.begin_index == start, f"set_begin_index({start}) but begin_index is {s.begin_index!r}"
    return start


@contract(KIND, "step_shape_dtype", examples=scheduler_examples)
def step_shape_dtype(subject: Subject, ex: dict, opts: dict) -> None:
    """``step`` and ``scale_model_input`` keep the sample's shape and float32 dtype at every step."""
    _loop_preserves(subject, ex, torch.float32)


@contract(KIND, "begin_index", examples=scheduler_examples)
def begin_index(subject: Subject, ex: dict, opts: dict) -> None:
    """``set_begin_index(k)`` exists and ``begin_index`` reports ``k``; the loop from ``timesteps[k]`` (half-way,
    at a step boundary) keeps shape and float32 dtype, as image-to-image runs it."""
    _loop_preserves(subject, ex, torch.float32, from_middle=True)


@contract(KIND, "step_half_precision", examples=scheduler_examples, budget=0.5)
def step_half_precision(subject: Subject, ex: dict, opts: dict) -> None:
    """On fp16 and bf16 samples ``step`` keeps the dtype (where the scheduler runs them at all)."""
    claimed = opts.get("half_precision")
    if claimed is False:
        raise NotApplicable("the plugin declares no half-precision support")
    ran = 0
    for dtype in (torch.float16, torch.bfloat16):
        try:
            _loop_preserves(subject, ex, dtype)
        except AssertionError:
            raise
        except (RuntimeError, TypeError) as err:
            if claimed:
                raise AssertionError(f"{dtype} is declared supported but step raised {type(err).__name__}: {err}") from err
            continue
        ran += 1
    if not ran:
        raise NotApplicable("step runs on neither float16 nor bfloat16")


@contract(KIND, "step_deterministic", examples=scheduler_examples)
def step_deterministic(subject: Subject, ex: dict, opts: dict) -> None:
    """Two loops with identically seeded generators give bit-identical samples."""
    outs = []
    for _ in range(2):
        s = build(subject, ex)
        x = _sample(ex["shape"], ex["seed"]) * float(getattr(s, "init_noise_sigma", 1.0) or 1.0)
        outs.append(run_loop(s, x, seed=ex["seed"]))
    diff = (outs[0] - outs[1]).abs().max().item()
    assert same(outs[0], outs[1]), f"same generator seed, different results (max abs diff {diff:.3g})"


@contract(KIND, "step_no_mutation", examples=scheduler_examples)
def step_no_mutation(subject: Subject, ex: dict, opts: dict) -> None:
    """``scale_model_input`` and ``step`` never change their input tensors in place."""
    s = build(subject, ex)
    x = _sample(ex["shape"], ex["seed"]) * float(getattr(s, "init_noise_sigma", 1.0) or 1.0)
    generator = torch.Generator().manual_seed(ex["seed"])
    for i, t in enumerate(timesteps_of(s)):
        before_x, before_t = x.clone(), torch.as_tensor(t).clone()
        x_in = scale_input(s, x, t)
        assert same(x, before_x), f"step {i}: scale_model_input changed its sample in place"
        out = fake_model(x_in, t, i)
        before_out = out.clone()
        prev = call_step(s, out, t, x, generator)
        assert same(x, before_x), f"step {i}: step changed its sample argument in place"
        assert same(out, before_out), f"step {i}: step changed its model_output argument in place"
        assert torch.equal(torch.as_tensor(t), before_t), f"step {i}: step changed its timestep argument in place"
        x = prev


@contract(KIND, "add_noise", examples=scheduler_examples)
def add_noise(subject: Subject, ex: dict, opts: dict) -> None:
    """``add_noise`` keeps the shape, is close to ``x0`` at the least noisy timestep and noisier at the most."""
    s = subject.instance(**ex["config"])
    for n in (min(_num_train(s), 1000), 100, 50, ex["steps"]):  # the finest accepted schedule
        try:
            s.set_timesteps(n)
            break
        except _REJECTED:  # schedulers with a bounded or fixed step count
            continue
    ts = timesteps_of(s)
    x0, noise = _clean(ex["shape"], ex["seed"]), _sample(ex["shape"], ex["seed"] + 1)
    t_low = min(ts, key=float) if opts.get("timestep_order", "descending") == "descending" else ts[0]
    t_high = max(ts, key=float)
    low, high = noisify(s, x0, noise, t_low), noisify(s, x0, noise, t_high)
    assert low.shape == x0.shape and high.shape == x0.shape, f"add_noise changed the shape {tuple(x0.shape)} -> {tuple(low.shape)}"
    rms = lambda z: float(z.double().pow(2).mean().sqrt())  # noqa: E731
    err_low, err_high = rms(low - x0) / rms(noise), rms(high - x0) / rms(noise)
    assert err_low <= 0.1, f"add_noise at the least noisy timestep {float(t_low)} is {err_low:.3g} (relative RMS) from x0; expected <= 0.1"
    assert err_high >= err_low, f"add_noise at t={float(t_high)} is closer to x0 ({err_high:.3g}) than at t={float(t_low)} ({err_low:.3g})"


def _normalized_config(s: Any) -> dict:
    return json.loads(json.dumps({k: v for k, v in dict(s.config).items() if not k.startswith("_")}, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    return str(v)


def _same_behaviour(a: Any, b: Any, ex: dict) -> None:
    a.set_timesteps(ex["steps"])
    b.set_timesteps(ex["steps"])
    ta, tb = [float(t) for t in timesteps_of(a)], [float(t) for t in timesteps_of(b)]
    assert ta == tb, f"timesteps differ after the round trip: {ta} vs {tb}"
    x = _sample(ex["shape"], ex["seed"]) * float(getattr(a, "init_noise_sigma", 1.0) or 1.0)
    ya, yb = run_loop(a, x.clone(), seed=ex["seed"]), run_loop(b, x.clone(), seed=ex["seed"])
    assert same(ya, yb), f"the loop gives different samples after the round trip (max abs diff {(ya - yb).abs().max().item():.3g})"


@contract(KIND, "config_round_trip", examples=scheduler_examples)
def config_round_trip(subject: Subject, ex: dict, opts: dict) -> None:
    """``type(s).from_config(s.config)`` has the same config and behaves identically."""
    s = subject.instance(**ex["config"])
    s2 = type(s).from_config(s.config)
    c1, c2 = _normalized_config(s), _normalized_config(s2)
    assert c1 == c2, f"config changed by from_config: {_diff(c1, c2)}"
    _same_behaviour(s, s2, ex)


@contract(KIND, "save_load_round_trip", examples=scheduler_examples, budget=0.5)
def save_load_round_trip(subject: Subject, ex: dict, opts: dict) -> None:
    """``save_config(dir)`` then ``from_pretrained(dir)`` gives the same config and behaviour."""
    s = subject.instance(**ex["config"])
    with tempfile.TemporaryDirectory() as d:
        s.save_config(d)
        s2 = type(s).from_pretrained(d)
    c1, c2 = _normalized_config(s), _normalized_config(s2)
    assert c1 == c2, f"config changed by save_config/from_pretrained: {_diff(c1, c2)}"
    _same_behaviour(s, s2, ex)


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}" for k in keys if a.get(k, "<m>") != b.get(k, "<m>"))


def _deterministic_only(subject: Subject, opts: dict) -> str | None:
    declared = opts.get("stochastic")
    if declared if declared is not None else _stochastic(subject):
        return "the scheduler is stochastic (different seeds give different samples)"
    return None


@contract(KIND, "exact_model_convergence", examples=scheduler_examples, applies=_deterministic_only)
def exact_model_convergence(subject: Subject, ex: dict, opts: dict) -> None:
    """With the exact model output (see :mod:`kernel_contracts.oracles`) the loop from
    ``add_noise(x0, noise, timesteps[0])`` returns to ``x0``."""
    s = build(subject, ex)
    ts = timesteps_of(s)
    x0, noise = _clean(ex["shape"], ex["seed"]), _sample(ex["shape"], ex["seed"] + 1)
    if opts.get("prediction_type"):
        ptype = opts["prediction_type"]
    elif is_flow(s):
        ptype = "flow_prediction"
    else:
        ptype = s.config.get("prediction_type") or "epsilon"
    custom = opts.get("exact_model_output")

    def model(x_in, t, i):
        if custom is not None:
            return custom(ptype, x_in, t, x0, noise)
        return oracles.exact_output(ptype, x_in, x0, noise)

    x = noisify(s, x0, noise, ts[0])
    end = run_loop(s, x, model=model, seed=ex["seed"])
    rms = lambda z: float(z.double().pow(2).mean().sqrt())  # noqa: E731
    err = rms(end - x0) / rms(noise)
    tol = float(opts.get("convergence_tolerance") or oracles.tolerance_for(getattr(s, "order", 1)))
    assert math.isfinite(err), "the loop produced non-finite values"
    assert err <= tol, (
        f"with the exact {ptype} model the loop ends {err:.3g} (relative RMS) from x0; tolerance {tol} "
        f"(timesteps {[round(float(t), 3) for t in ts]})"
    )
