"""T2IAdapter (each adapter_type) and MultiAdapter against Diffusers' (fp32, 1e-4), their files both ways, and
bad configurations and inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel

sys.path.insert(0, str(Path(__file__).parent))
import t2i_fixtures as tf  # noqa: E402
from t2i_fixtures import single_thread  # noqa: E402,F401

from kernel.engine import Evaluation  # noqa: E402
from kernel.guidance import GuidancePass, GuidanceStep  # noqa: E402
from kernel_t2i_adapter import AdapterInputs, MultiAdapter, T2IAdapter, T2IAdapterHook, adapter_steps  # noqa: E402

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")

# Real layouts, narrowed: SD 1.x full (4 levels), SDXL (4 features, one downsampling), light (3 + 1 levels).
CONFIGS = {
    "full_adapter": dict(in_channels=3, channels=[8, 16, 16, 32], num_res_blocks=2, downscale_factor=8,
                         adapter_type="full_adapter"),
    "full_adapter-gray": dict(in_channels=1, channels=[8, 16], num_res_blocks=1, downscale_factor=4,
                              adapter_type="full_adapter"),
    "full_adapter_xl": dict(in_channels=3, channels=[8, 16, 32, 32], num_res_blocks=2, downscale_factor=16,
                            adapter_type="full_adapter_xl"),
    "light_adapter": dict(in_channels=3, channels=[8, 16, 32], num_res_blocks=4, downscale_factor=8,
                          adapter_type="light_adapter"),
}


def _pair(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    theirs = diffusers.T2IAdapter(**config).eval()
    return theirs, tf.fx.ours_of(theirs)


def _close(a, b, atol=1e-4):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize("case", list(CONFIGS))
def test_adapter_matches_diffusers(case):
    config = CONFIGS[case]
    theirs, ours = _pair(config)
    x = torch.rand(2, config["in_channels"], 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    _close(expected, got)
    assert ours.downscale_factor == theirs.downscale_factor
    assert ours.total_downscale_factor == theirs.total_downscale_factor
    total = ours.total_downscale_factor  # odd sizes round up, as the UNet's strided convolutions do
    assert got[-1].shape[-2:] == (-(-64 // total), -(-96 // total))


def test_xl_adapter_features_fit_sdxl_stages():
    """SDXL's layout: the first two features at 1/16, the last two at 1/32 (the last one for the mid block)."""
    _, ours = _pair(CONFIGS["full_adapter_xl"])
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in ours(torch.rand(1, 3, 128, 128))]
    assert shapes == [(8, 8, 8), (16, 8, 8), (32, 4, 4), (32, 4, 4)]


@pytest.mark.parametrize("weights", [None, [0.25, 1.5]], ids=["equal", "weighted"])
def test_multi_adapter_matches_diffusers(weights):
    pairs = [_pair(CONFIGS["full_adapter"], seed=s) for s in (0, 1)]
    theirs = diffusers.MultiAdapter([p[0] for p in pairs])
    ours = kernel.component("MultiAdapter")([p[1] for p in pairs])
    xs = [torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    with torch.no_grad():
        _close(theirs(xs, weights), ours(xs, weights))
        # weights scale each adapter's features before they add up
        single = [pairs[1][1](xs[1]), pairs[0][1](xs[0])]
    w = weights or [0.5, 0.5]
    _close(ours(xs, weights), [w[0] * a + w[1] * b for a, b in zip(single[1], single[0])])
    assert ours.downscale_factor == 8 and ours.total_downscale_factor == 64 and ours.num_adapter == 2


def test_adapter_files_round_trip_with_diffusers(tmp_path):
    theirs, ours = _pair(CONFIGS["light_adapter"])
    x = torch.rand(1, 3, 64, 64)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = T2IAdapter.from_pretrained(tmp_path / "theirs")
    assert dict(loaded.config)["adapter_type"] == "light_adapter"
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.T2IAdapter.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        _close(theirs(x), loaded(x), atol=0)
        _close(ours(x), back(x), atol=0)


def test_multi_adapter_files_round_trip_with_diffusers(tmp_path):
    # Two adapters: Diffusers 0.42 saves a third one as adapter_1_2, which neither library loads back.
    pairs = [_pair(CONFIGS["full_adapter-gray"], seed=s) for s in (0, 1)]
    theirs = diffusers.MultiAdapter([p[0] for p in pairs])
    ours = MultiAdapter([p[1] for p in pairs])
    xs = [torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    theirs.save_pretrained(str(tmp_path / "theirs" / "adapter"))
    loaded = MultiAdapter.from_pretrained(tmp_path / "theirs", subfolder="adapter")
    ours.save_pretrained(tmp_path / "ours" / "adapter")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["adapter", "adapter_1"]
    back = diffusers.MultiAdapter.from_pretrained(str(tmp_path / "ours" / "adapter"))
    with torch.no_grad():
        _close(theirs(xs, [0.2, 0.8]), loaded(xs, [0.2, 0.8]), atol=0)
        _close(ours(xs), back(xs), atol=0)


def test_multi_adapter_saves_one_folder_per_adapter(tmp_path):
    adapters = [tf.our_adapter(seed=s) for s in (0, 1, 2)]
    MultiAdapter(adapters).save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "adapter_1", "adapter_2"]
    loaded = MultiAdapter.from_pretrained(tmp_path / "adapter")
    assert loaded.num_adapter == 3
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        _close(loaded.adapters[2](x), adapters[2](x), atol=0)
    with pytest.raises(ValueError, match="two or more"):
        MultiAdapter.from_pretrained(tmp_path / "adapter_2")


BAD_CONFIGS = {
    "type": (dict(adapter_type="tiny_adapter"), "adapter_type"),
    "channels": (dict(channels=[]), "channels"),
    "xl-widths": (dict(adapter_type="full_adapter_xl", channels=[8, 16, 32, 64]), "channels"),
    "downscale": (dict(downscale_factor=0), "downscale_factor"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_adapter_config_raises_value_error_naming_it(case):
    over, name = BAD_CONFIGS[case]
    with pytest.raises(ValueError, match=name):
        T2IAdapter(**{**CONFIGS["full_adapter-gray"], **over})


def test_bad_adapter_input_and_multi_adapter_lists_raise():
    _, ours = _pair(CONFIGS["full_adapter-gray"])
    with pytest.raises(ValueError, match="downscale_factor"):
        ours(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="1, height, width"):
        ours(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="two or more"):
        MultiAdapter([ours])
    other = T2IAdapter(**{**CONFIGS["full_adapter-gray"], "downscale_factor": 8})
    with pytest.raises(ValueError, match="downscale alike"):
        MultiAdapter([ours, other])
    with pytest.raises(ValueError, match="one entry per adapter"):
        MultiAdapter([ours, ours])([torch.rand(1, 1, 32, 32)] * 2, [1.0])


def _evaluation(index: int, kwargs: dict | None = None) -> Evaluation:
    shared = {"f0": torch.ones(2, 4, 8, 8), "f1": torch.full((2, 8, 4, 4), 2.0)}
    return Evaluation(model_input=torch.zeros(2, 4, 8, 8), timestep=torch.tensor(10), cond={}, shared=shared,
                      kwargs=dict(kwargs or {}), passes=(GuidancePass("cond"),),
                      step=GuidanceStep(index, 4, torch.tensor(10), False))


def test_hook_adds_features_for_the_leading_steps_and_adds_to_existing_ones():
    hook = T2IAdapterHook()
    untouched = _evaluation(0)
    hook(None, untouched)  # no call set up yet
    assert untouched.kwargs == {}
    hook.inputs = AdapterInputs(["f0", "f1"], active_steps=adapter_steps(4, 0.6))  # int(2.4) = 2 steps
    seen = []
    for i in range(4):
        ev = _evaluation(i)
        hook(None, ev)
        seen.append("down_intrablock_additional_residuals" in ev.kwargs)
    assert seen == [True, True, False, False]
    other = [torch.full((2, 4, 8, 8), 0.5), torch.full((2, 8, 4, 4), 0.5)]
    ev = _evaluation(1, {"down_intrablock_additional_residuals": other})
    hook(None, ev)
    got = ev.kwargs["down_intrablock_additional_residuals"]
    assert [float(t.mean()) for t in got] == [1.5, 2.5] and got is not other
