"""The memory planner, against a brute-force oracle written here, with Hypothesis: a plan is found
whenever any placement fits, it fits, it is the cheapest that fits, and more memory never gives a
costlier plan; then enable_auto_memory on a tiny pipeline (on the CPU as the device)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_memory.planner import FP8_COST, ComponentSize, parse_bytes, plan
from kernel_memory.testing import tiny_sd_pipeline


@st.composite
def component_sets(draw):
    out = []
    for i in range(draw(st.integers(1, 4))):
        weights = draw(st.integers(0, 1000))
        out.append(ComponentSize(
            name=f"c{i}", weights=weights, activation=draw(st.integers(0, 300)),
            stream_peak=draw(st.one_of(st.none(), st.integers(0, weights))),
            fp8_saving=draw(st.integers(0, weights // 2)), calls=draw(st.integers(1, 30))))
    return out


def oracle(components, budget):
    """(smallest peak of any placement, lowest cost among those that fit or None), by brute force."""
    options = []
    for c in components:
        modes = ["resident", "offload"] + (["stream"] if c.stream_peak is not None else [])
        options.append([(m, f) for m in modes for f in ([False, True] if c.fp8_saving else [False])])
    smallest, cheapest = None, None
    for combo in itertools.product(*options):
        stored = [c.weights - (c.fp8_saving if f else 0) for c, (m, f) in zip(components, combo)]
        resident = sum(s for s, (m, _) in zip(stored, combo) if m == "resident")
        peaks, moved, cast = [], 0, 0
        for c, s, (m, f) in zip(components, stored, combo):
            streamed = round((c.stream_peak or 0) * (s / c.weights if c.weights else 1.0))
            peaks.append(resident + {"resident": 0, "offload": s, "stream": streamed}[m] + c.activation)
            moved += {"resident": 0, "offload": s, "stream": s * c.calls}[m]
            cast += s * c.calls if f else 0
        peak, cost = max(peaks), moved + FP8_COST * cast
        smallest = peak if smallest is None else min(smallest, peak)
        if peak <= budget:
            cheapest = cost if cheapest is None else min(cheapest, cost)
    return smallest, cheapest


@settings(max_examples=150, deadline=None)
@given(component_sets(), st.integers(1, 5000))
def test_plan_fits_whenever_any_plan_can_and_is_the_cheapest(components, budget):
    smallest, cheapest = oracle(components, budget)
    if cheapest is None:
        with pytest.raises(ValueError, match=f"needs .*\\({smallest} bytes"):
            plan(components, budget)
        return
    chosen = plan(components, budget)
    assert chosen.peak <= budget and chosen.resident <= budget
    assert chosen.cost == pytest.approx(cheapest)


@settings(max_examples=150, deadline=None)
@given(component_sets(), st.integers(1, 5000), st.integers(0, 5000))
def test_more_memory_never_gives_a_slower_plan(components, budget, extra):
    try:
        small = plan(components, budget)
    except ValueError:
        return
    large = plan(components, budget + extra)
    assert large.cost <= small.cost
    assert large.resident <= budget + extra


def test_examples_and_budget_strings():
    unet = ComponentSize("unet", weights=5000, activation=500, stream_peak=1500, fp8_saving=2000, calls=30)
    text = ComponentSize("text_encoder", weights=1500, activation=100)
    vae = ComponentSize("vae", weights=200, activation=1500)
    assert set(plan([unet, text, vae], 10_000).modes.values()) == {"resident"}  # peak 8200 (the VAE decoding)
    tight = plan([unet, text, vae], 7_000)  # the text encoder moves out (1500 bytes), cheaper than fp8 casts
    assert tight.modes == {"unet": "resident", "text_encoder": "offload", "vae": "resident"} and not tight.fp8
    tighter = plan([unet, text, vae], 4_600)  # fp8 storage costs less than moving the unet every step
    assert tighter.fp8 == {"unet"} and tighter.peak <= 4_600
    assert plan([unet, text, vae], 2_600).modes["unet"] == "stream"
    with pytest.raises(ValueError, match="needs"):
        plan([unet, text, vae], 1_000)
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("1.5 GiB") == 3 * 2**29 and parse_bytes(42) == 42
    for bad in ("eight GB", "-1GB", 0, "3 parsecs"):
        with pytest.raises(ValueError, match="budget"):
            parse_bytes(bad)


def test_auto_memory_on_a_tiny_pipeline():
    from kernel_memory.auto import _components

    pipe = tiny_sd_pipeline()
    call = dict(prompt="a cube", num_inference_steps=2, height=32, width=32, output_type="np")
    ref = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    roomy = pipe.enable_auto_memory(budget="1GB", device="cpu", height=32, width=32)
    assert set(roomy.modes.values()) == {"resident"} and not roomy.fp8
    assert "unet" in pipe.memory_plan() and "resident" in pipe.memory_plan()
    components = _components(pipe, 32, 32, 1, 30)
    all_in = plan(components, 10**12).peak
    chosen = pipe.enable_auto_memory(budget=all_in - 1, device="cpu", height=32, width=32)
    assert chosen.peak <= all_in - 1 and chosen.resident <= all_in - 1
    assert set(chosen.modes.values()) != {"resident"} or chosen.fp8
    out = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    if not chosen.fp8:
        assert np.array_equal(out, ref)  # streaming and offloading move weights, they do not change them
    else:
        assert np.abs(out - ref).max() < 0.15
    with pytest.raises(ValueError, match="below the smallest plan, which needs"):
        pipe.enable_auto_memory(budget=1000, device="cpu")
    with pytest.raises(ValueError, match="budget="):
        pipe.enable_auto_memory(device="cpu")
    with pytest.raises(ValueError, match="no memory plan"):
        tiny_sd_pipeline().memory_plan()


def test_auto_memory_replans_when_the_size_grows():
    pipe = tiny_sd_pipeline()
    pipe.enable_auto_memory(budget="1GB", device="cpu", height=32, width=32)
    first = pipe.__dict__["_kernel_auto_memory"]["size"]
    pipe(prompt="a cube", num_inference_steps=1, height=128, width=128, output_type="np")
    assert pipe.__dict__["_kernel_auto_memory"]["size"] != first
