"""Conditioner contracts (:class:`kernel.protocols.Conditioner`).

``encode_prompt(prompts, **encode_kwargs)`` must return ``(prompt_embeds, pooled_or_None, ...)``
or the embeddings alone.  Declarations: ``encode_kwargs`` (extra keyword arguments, e.g. a
device), ``long_prompt`` (``"truncate"`` (default: the length stays that of a short prompt) or
``"chunk"`` (a multiple of it)).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from kernel_contracts.engine import Subject, contract

_WORDS = ("a", "photo", "of", "cat", "astronaut", "riding", "horse", "red", "blue", "mountain", "lake", "city")


def prompt_examples(subject: Subject, opts: dict):
    prompt = st.lists(st.sampled_from(_WORDS), min_size=0, max_size=8).map(" ".join)
    return st.fixed_dictionaries({"prompts": st.lists(prompt, min_size=1, max_size=3)})


def encode(subject: Subject, opts: dict, prompts: list[str]) -> tuple[torch.Tensor, Any]:
    conditioner = subject.cached("conditioner", subject.instance)
    with torch.no_grad():
        out = conditioner.encode_prompt(prompts, **(opts.get("encode_kwargs") or {}))
    if isinstance(out, torch.Tensor):
        return out, None
    return out[0], _pooled(out[1:])


def _pooled(rest: Any) -> torch.Tensor | None:
    """The pooled embeddings: the first 2-D floating-point tensor after the embeddings.

    Conditioners order their outputs differently (SD: embeddings and negative embeddings;
    SDXL/SD3: embeddings, negatives, pooled, negative pooled; Flux: embeddings, pooled, text ids;
    T5/PixArt: embeddings and an integer attention mask), so position alone does not say which
    output is pooled; 3-D negatives and integer masks are skipped.
    """
    for t in rest:
        if isinstance(t, torch.Tensor) and t.ndim == 2 and t.is_floating_point():
            return t
    return None


@contract("conditioner", "embedding_shapes", examples=prompt_examples)
def embedding_shapes(subject: Subject, ex: dict, opts: dict) -> None:
    """``B`` prompts give ``(B, L, D)`` embeddings (one ``L`` for the batch) and ``(B, D')`` pooled outputs."""
    prompts = ex["prompts"]
    embeds, pooled = encode(subject, opts, prompts)
    assert embeds.ndim == 3 and embeds.shape[0] == len(prompts), f"embeddings {tuple(embeds.shape)} for {len(prompts)} prompts"
    if pooled is not None:
        assert pooled.shape[0] == len(prompts), f"pooled {tuple(pooled.shape)} for {len(prompts)} prompts"
    for prompt in dict.fromkeys(prompts):
        one, _ = encode(subject, opts, [prompt])
        assert one.shape[1:] == embeds.shape[1:], (
            f"length/width depend on the batch: {tuple(one.shape)} for {prompt!r} alone, {tuple(embeds.shape)} in the batch")


@contract("conditioner", "long_prompts", examples=prompt_examples, budget=0.5)
def long_prompts(subject: Subject, ex: dict, opts: dict) -> None:
    """A prompt far past the token limit is truncated (same ``L``) or chunked (a multiple of ``L``)."""
    short, _ = encode(subject, opts, ex["prompts"][:1])
    long_prompt = " ".join(_WORDS[i % len(_WORDS)] for i in range(400))
    long, _ = encode(subject, opts, [long_prompt])
    mode = opts.get("long_prompt", "truncate")
    if mode == "chunk":
        assert long.shape[1] % short.shape[1] == 0, f"chunked length {long.shape[1]} is not a multiple of {short.shape[1]}"
    else:
        assert long.shape[1] == short.shape[1], f"a long prompt gives length {long.shape[1]}, a short one {short.shape[1]}"


@contract("conditioner", "deterministic", examples=prompt_examples)
def conditioner_deterministic(subject: Subject, ex: dict, opts: dict) -> None:
    """Encoding the same prompts twice gives identical embeddings."""
    (a, pa), (b, pb) = encode(subject, opts, ex["prompts"]), encode(subject, opts, ex["prompts"])
    assert torch.equal(a, b), "embeddings differ between two calls"
    if pa is not None:
        assert torch.equal(pa, pb), "pooled embeddings differ between two calls"
