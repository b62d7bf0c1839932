"""Tiny SD / SDXL pipeline pairs (Diffusers, ours) and seeded random embeddings for the kernel-textual-inversion tests.

Each pipeline gets its own tokenizers and text encoders (copies), since loading an embedding changes them in place.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sd" / "tests"))
import sd_fixtures as fx  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
import kernel  # noqa: E402

WIDTH = 32  # hidden size of the tiny CLIP text encoders (both of SDXL's)
CALL = dict(num_inference_steps=2, height=32, width=32, output_type="np")
_TEXT_PARTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")


def pipelines(xl: bool = False, seed: int = 0):
    """(Diffusers pipeline, our pipeline) with the same weights and their own tokenizers and text encoders."""
    theirs, ours = fx.xl_components(seed=seed) if xl else fx.sd_components(seed=seed)
    for parts in (theirs, ours):
        for name in _TEXT_PARTS:
            if parts.get(name) is not None:
                parts[name] = copy.deepcopy(parts[name])
    name = "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"
    d, o = getattr(diffusers, name)(**theirs), kernel.component(name)(**ours)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    return d, o


def ours(xl: bool = False, seed: int = 0):
    return pipelines(xl, seed)[1]


def vectors(rows: int | None, seed: int, width: int = WIDTH) -> torch.Tensor:
    """A seeded random embedding: ``[rows, width]``, or ``[width]`` for ``rows=None``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((width,) if rows is None else (rows, width), generator=g)


def encode(pipe, **kwargs):
    """``pipe.encode_prompt`` with guidance on the CPU (the same keywords work for Diffusers' and ours, SD and SDXL)."""
    return pipe.encode_prompt(device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=True,
                              **kwargs)


def same_embeds(d, o, **kwargs) -> None:
    for a, b in zip(encode(d, **kwargs), encode(o, **kwargs), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def differ(a, b, by: float = 1e-3) -> bool:
    return any((x - y).abs().max().item() > by for x, y in zip(a, b))


def images(pipe, seed: int = 0, **call) -> np.ndarray:
    return pipe(generator=fx.gen(seed), **{**CALL, **call}).images


def pairs(pipe):
    return [(getattr(pipe, t, None), getattr(pipe, e, None)) for t, e in
            (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]


def text_state(pipe) -> list[tuple]:
    """Everything loading an embedding changes: the added vocabulary, tokenizer length, ids of a probe prompt,
    the embedding matrix (values and the parameter object) and the config's vocabulary size, per pair."""
    out = []
    for tok, enc in pairs(pipe):
        if tok is None or enc is None:
            continue
        weight = enc.get_input_embeddings().weight
        out.append((dict(tok.added_tokens_encoder), len(tok), tok("a <cat-toy> b").input_ids, weight.detach().clone(),
                    id(weight), enc.config.vocab_size))
    return out


def assert_same_state(before: list[tuple], after: list[tuple], same_objects: bool = True) -> None:
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert a[:3] == b[:3]
        assert torch.equal(a[3], b[3])
        assert a[5] == b[5]
        if same_objects:
            assert a[4] == b[4], "the embedding parameter was replaced"
