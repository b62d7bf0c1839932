"""CogVideoXImageToVideoPipeline against Diffusers' on the same tiny random components (1e-3), and its errors."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cog_fixtures as fx  # noqa: E402
from cog_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")

from kernel_cogvideo import CogVideoXImageToVideoPipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3
VARIANTS = {
    "5b": dict(use_rotary_positional_embeddings=True, in_channels=8),
    "2b-learned": dict(use_rotary_positional_embeddings=True, in_channels=8, use_learned_positional_embeddings=True),
    "1.5": dict(use_rotary_positional_embeddings=True, in_channels=8, patch_size_t=2, ofs_embed_dim=8),
}


@functools.lru_cache(maxsize=None)
def _pipes(variant: str):
    ours, ref = fx.pipeline_parts(**VARIANTS[variant])
    pipe, ref_pipe = CogVideoXImageToVideoPipeline(**ours), diffusers.CogVideoXImageToVideoPipeline(**ref)
    pipe.set_progress_bar_config(disable=True)
    ref_pipe.set_progress_bar_config(disable=True)
    return pipe, ref_pipe


def _args(**kw):
    return {"image": fx.video(1)[0], "prompt": "a cat", "height": fx.SIZE, "width": fx.SIZE, "num_frames": 9,
            "num_inference_steps": 2, "max_sequence_length": 16, "output_type": "pt", **kw}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kw", [
    {},
    {"negative_prompt": "the dog", "use_dynamic_cfg": True},
    {"prompt": ["a cat", "the dog"], "image": fx.video(2, seed=1)},
], ids=["default", "negative-dynamic-cfg", "batch"])
def test_matches_diffusers(variant, kw):
    pipe, ref = _pipes(variant)
    args = _args(**kw)
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).frames
    got = pipe(**args, generator=torch.Generator().manual_seed(0)).frames
    assert got.shape == expected.shape == (len(args["image"]) if isinstance(args["image"], list) else 1, 9, 3,
                                           fx.SIZE, fx.SIZE)
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_given_latents_and_generator_list():
    pipe, ref = _pipes("5b")
    latents = torch.randn(1, 3, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    args = _args(latents=latents)
    got = pipe(**args, generator=torch.Generator().manual_seed(1)).frames
    torch.testing.assert_close(got, ref(**args, generator=torch.Generator().manual_seed(1)).frames, atol=ATOL, rtol=0)
    # one image for two prompts, one generator each: the image is encoded once per generator
    out = pipe(**_args(prompt=["a cat", "the dog"]),
               generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]).frames
    alone = pipe(**_args(), generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(out[:1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw, match", [
    ({"image": None}, "image is required"),
    ({"image": 3}, "image must be a PIL image"),
    ({"image": fx.video(2), "prompt": ["a", "b", "c"]}, "got 2 images for a batch of 3"),
])
def test_bad_inputs(kw, match):
    pipe, _ = _pipes("5b")
    with pytest.raises(ValueError, match=match):
        pipe(**_args(**kw))


def test_folders_both_ways_and_family(tmp_path):
    import kernel
    from kernel.loading import CheckpointMismatchError

    pipe, ref = _pipes("5b")
    ref.save_pretrained(tmp_path / "ref")
    pipe.save_pretrained(tmp_path / "ours")
    loaded = kernel.load(str(tmp_path / "ref"))
    assert isinstance(loaded, CogVideoXImageToVideoPipeline)
    assert isinstance(kernel.load("cogvideox-i2v", str(tmp_path / "ref")), CogVideoXImageToVideoPipeline)
    with pytest.raises(CheckpointMismatchError, match="CogVideoXImageToVideoPipeline"):
        kernel.load("cogvideox", str(tmp_path / "ref"))
    back = diffusers.CogVideoXImageToVideoPipeline.from_pretrained(tmp_path / "ours")
    args = _args()
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).frames
    for other in (loaded, back):
        torch.testing.assert_close(other(**args, generator=torch.Generator().manual_seed(0)).frames, expected,
                                   atol=ATOL, rtol=0)
