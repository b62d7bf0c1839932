"""Guider contracts (:class:`kernel.protocols.Guider`).

A guider is tested on random predictions: for a drawn step, it declares its passes, receives one
random prediction per pass and combines them.  Declarations a guider may make (class attributes):
``neutral_config`` -- the config overrides that make it neutral (e.g. ``{"guidance_scale": 1.0}``);
without one the neutral-scale contract does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from hypothesis import strategies as st

from kernel.guidance import NEGATIVE, POSITIVE, GuidanceStep
from kernel_contracts.engine import NotApplicable, Subject, contract


@st.composite
def _steps(draw) -> dict:
    num_steps = draw(st.integers(1, 12))
    return {
        "index": draw(st.integers(0, num_steps - 1)),
        "num_steps": num_steps,
        "timestep": draw(st.floats(0.0, 999.0)),
        "has_negative": draw(st.booleans()),
        "batch": draw(st.integers(1, 3)),
        "shape": draw(st.sampled_from([(4, 4, 4), (3, 2, 5), (6, 8)])),
        "seed": draw(st.integers(0, 2**16)),
    }


def step_examples(subject: Subject, opts: dict):
    return _steps()


def _step(ex: dict) -> GuidanceStep:
    return GuidanceStep(ex["index"], ex["num_steps"], torch.tensor(ex["timestep"]), ex["has_negative"])


def _predictions(passes, ex: dict, batch: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(ex["seed"])
    return {p.name: torch.randn((batch or ex["batch"], *ex["shape"]), generator=g, dtype=torch.float64)
            for p in passes}


def _plain_positive(passes) -> str:
    for p in passes:
        if p.conditioning == POSITIVE and not p.options and p.context is None:
            return p.name
    raise AssertionError(f"no plain positive pass among {[p.name for p in passes]}")


class _Recorder(Mapping):
    """The predictions, remembering which ones ``combine`` reads."""

    def __init__(self, data: dict):
        self.data, self.read = data, set()

    def __getitem__(self, key):
        self.read.add(key)
        return self.data[key]

    def __contains__(self, key) -> bool:
        return key in self.data

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@contract("guider", "declared_passes_are_used", examples=step_examples)
def declared_passes_are_used(subject: Subject, ex: dict, opts: dict) -> None:
    """``combine`` reads exactly the passes ``passes`` declared, and returns the latents' shape."""
    guider = subject.instance()
    guider.reset()
    step = _step(ex)
    passes = guider.passes(step)
    names = [p.name for p in passes]
    assert len(set(names)) == len(names), f"pass names repeat: {names}"
    assert all(p.conditioning in (POSITIVE, NEGATIVE) for p in passes), f"unknown conditioning in {passes}"
    recorder = _Recorder(_predictions(passes, ex))
    out = guider.combine(recorder, step)
    assert recorder.read == set(names), f"declared {sorted(names)} but combine read {sorted(recorder.read)}"
    assert tuple(out.shape) == (ex["batch"], *ex["shape"]), f"result shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "non-finite result from finite predictions"


@contract("guider", "no_negative_without_one", examples=step_examples)
def no_negative_without_one(subject: Subject, ex: dict, opts: dict) -> None:
    """Without negative conditioning (``has_negative=False``) no pass asks for it."""
    guider = subject.instance()
    step = GuidanceStep(ex["index"], ex["num_steps"], torch.tensor(ex["timestep"]), False)
    asked = [p.name for p in guider.passes(step) if p.conditioning == NEGATIVE]
    assert not asked, f"passes {asked} ask for negative conditioning the step does not have"
    if not guider.uses_negative:
        step = _step({**ex, "has_negative": True})
        asked = [p.name for p in guider.passes(step) if p.conditioning == NEGATIVE]
        assert not asked, f"uses_negative is False but passes {asked} ask for it"


@contract("guider", "batch_order_preserved", examples=step_examples)
def batch_order_preserved(subject: Subject, ex: dict, opts: dict) -> None:
    """Row ``i`` of the result depends only on row ``i`` of each prediction."""
    if ex["batch"] < 2:
        raise NotApplicable("needs a batch of 2 or more")
    step = _step(ex)
    guider = subject.instance()
    guider.reset()
    passes = guider.passes(step)
    preds = _predictions(passes, ex)
    whole = guider.combine(preds, step)
    for i in range(ex["batch"]):
        one = subject.instance()
        one.reset()
        row = one.combine({k: v[i:i + 1] for k, v in preds.items()}, step)
        torch.testing.assert_close(row, whole[i:i + 1], rtol=1e-9, atol=1e-9)


@contract("guider", "neutral_scale_gives_positive", examples=step_examples)
def neutral_scale_gives_positive(subject: Subject, ex: dict, opts: dict) -> None:
    """At its neutral scales (``neutral_config``) the guider returns the positive prediction."""
    neutral = getattr(subject.cls, "neutral_config", None)
    if neutral is None:
        raise NotApplicable("the guider declares no neutral_config")
    guider = subject.instance(**neutral)
    guider.reset()
    step = _step(ex)
    passes = guider.passes(step)
    preds = _predictions(passes, ex)
    out = guider.combine(preds, step)
    torch.testing.assert_close(out, preds[_plain_positive(passes)], rtol=1e-9, atol=1e-9)


@contract("guider", "config_round_trip", examples=step_examples)
def config_round_trip(subject: Subject, ex: dict, opts: dict) -> None:
    """``from_config(config)`` rebuilds a guider with the same passes and the same result."""
    a = subject.instance()
    b = type(a).from_config(dict(a.config))
    assert dict(a.config) == dict(b.config), "config changed in the round trip"
    step = _step(ex)
    pa, pb = a.passes(step), b.passes(step)
    assert [(p.name, p.conditioning, dict(p.options)) for p in pa] == \
        [(p.name, p.conditioning, dict(p.options)) for p in pb], "passes differ after the round trip"
    a.reset()
    b.reset()
    preds = _predictions(pa, ex)
    assert torch.equal(a.combine(preds, step), b.combine(preds, step)), "results differ after the round trip"

