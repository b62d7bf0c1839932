"""Original AnimateDiff motion-module checkpoints (``mm_sd_v15_v2.ckpt`` layout) through
``MotionAdapter.from_single_file``, against Diffusers 0.42.1's ``MotionAdapter.from_single_file``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import diffusers
from kernel_animatediff import MotionAdapter
from kernel_animatediff.single_file import CONFIGS, FAMILIES, detect

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402

_NAMES = ((".norm1", ".norms.0"), (".norm2", ".norms.1"), (".norm3", ".ff_norm"), (".attn1", ".attention_blocks.0"),
          (".attn2", ".attention_blocks.1"))


def original_key(key: str) -> list[str]:
    """Our (Diffusers') adapter key -> the original AnimateDiff key(s): ``temporal_transformer`` after the motion
    module, ``attention_blocks`` / ``norms``, and a position table per attention block."""
    for new, old in _NAMES:
        key = key.replace(new, old)
    parts = key.split(".")
    at = parts.index("motion_modules") + 2
    key = ".".join(parts[:at] + ["temporal_transformer"] + parts[at:])
    if key.endswith(".pos_embed.pe"):
        return [key.replace(".pos_embed.pe", f".attention_blocks.{i}.pos_encoder.pe") for i in (0, 1)]
    return [key]


def original_state(adapter, pe_length=None) -> dict:
    out = {}
    for key, value in adapter.state_dict().items():
        for name in original_key(key):
            if name.endswith(".pe") and pe_length is not None:
                value = torch.zeros(1, pe_length, value.shape[-1], device=value.device)
            out[name] = value.clone().contiguous()
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm")
    theirs, _ = fx.pair("MotionAdapter", 1, **fx.ADAPTER)
    theirs.save_config(root / "config")
    state = original_state(theirs)
    safetensors.torch.save_file(state, root / "mm.safetensors")
    torch.save(state, root / "mm.ckpt")
    return theirs, root


@pytest.mark.parametrize("name", ["mm.safetensors", "mm.ckpt"])
def test_original_file_loads_as_diffusers_loads_it(files, name):
    theirs, root = files
    path = str(root / name)
    ours = MotionAdapter.from_single_file(path, config=str(root / "config"))
    oracle = diffusers.MotionAdapter.from_single_file(path, config=str(root / "config"))
    mine, want = ours.state_dict(), oracle.state_dict()
    assert set(mine) == set(want)
    assert all(torch.equal(mine[k], want[k]) for k in want)
    assert all(torch.equal(mine[k], v) for k, v in theirs.state_dict().items())


def test_the_loaded_adapter_makes_diffusers_video(files):
    _, root = files
    adapter = MotionAdapter.from_single_file(str(root / "mm.safetensors"), config=str(root / "config"))
    d, k = fx.components()
    theirs = diffusers.AnimateDiffPipeline(**d)
    ours = type(fx.pipelines()[1])(**{**k, "motion_adapter": adapter})
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    args = dict(prompt="a cat walks", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
                output_type="np")
    diff = fx.max_diff(ours(**args, generator=fx.gen(0)).frames, theirs(**args, generator=fx.gen(0)).frames)
    print(f"max diff single-file adapter video: {diff:.2e}")
    assert diff < 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_each_bundled_config_is_recognised_from_its_own_layout(family):
    """A full-size adapter of each bundled config, on the meta device, written in the original layout (with the
    original position-table length) is detected as that family."""
    config = json.loads((CONFIGS / family / "motion_adapter" / "config.json").read_text())
    with torch.device("meta"):
        adapter = MotionAdapter.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in original_state(adapter, pe_length=config["motion_max_seq_length"]).items()}
    assert detect(shapes) == family


def test_other_files_are_not_motion_modules(files):
    theirs, _ = files
    shapes = {k: tuple(v.shape) for k, v in original_state(theirs).items()}
    assert detect({k: v for k, v in shapes.items() if ".pos_encoder." not in k}) is None
    assert detect({**shapes, "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3)}) is None  # SparseCtrl
    assert detect({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}) is None


def test_a_file_that_does_not_fit_the_bundled_config_names_config(files):
    _, root = files
    with pytest.raises(ValueError, match=r"animatediff-motion-v2 motion modules do not fit .*pass config="):
        MotionAdapter.from_single_file(str(root / "mm.safetensors"))
    wider = fx.pair("MotionAdapter", 2, **{**fx.ADAPTER, "block_out_channels": (16, 32)})[0]
    wider.save_config(root / "wider")
    with pytest.raises(ValueError, match=r"has shape .* pass config="):
        MotionAdapter.from_single_file(str(root / "mm.safetensors"), config=str(root / "wider"))
