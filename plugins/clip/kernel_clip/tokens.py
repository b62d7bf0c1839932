"""Prompt text -> CLIP token ids (with per-token weights), in 77-token windows.

CLIP's text transformer has 77 positions: ``BOS``, up to 75 prompt tokens, ``EOS``, then
padding.  :func:`prompt_tokens` turns one prompt into its bare token ids and weights;
:func:`pack_windows` lays a list of those out as ``[batch, windows, 77]`` ids where every
window is ``BOS + 75 tokens + EOS + padding`` (the layout the tokenizer itself produces, so a
single window is exactly the ids Diffusers feeds the encoder).

Prompt rewriters (:func:`add_prompt_rewriter`) are functions ``rewrite(tokenizer, prompt) -> prompt``
that every prompt passes through, for each tokenizer, just before it is tokenized (prompt and
negative prompt alike, before the emphasis syntax is parsed).  kernel-textual-inversion adds
one that spells a multi-vector token ``<t>`` out as ``<t> <t>_1 <t>_2 ...``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from kernel_clip.emphasis import parse_emphasis


PromptRewriter = Callable[[Any, str], str]
_REWRITERS: list[PromptRewriter] = []


def add_prompt_rewriter(rewrite: PromptRewriter) -> PromptRewriter:
    """Run ``rewrite(tokenizer, prompt) -> prompt`` on every prompt before it is tokenized (once; in order added)."""
    if rewrite not in _REWRITERS:
        _REWRITERS.append(rewrite)
    return rewrite


def remove_prompt_rewriter(rewrite: PromptRewriter) -> None:
    if rewrite in _REWRITERS:
        _REWRITERS.remove(rewrite)


def rewrite_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` after every registered rewriter, for ``tokenizer``."""
    for rewrite in _REWRITERS:
        prompt = rewrite(tokenizer, prompt)
    return prompt


@dataclass
class TokenRow:
    """One prompt's token ids (no BOS/EOS) and the weight of each."""

    ids: list[int]
    weights: list[float]

    def windows(self, size: int) -> int:
        return max(1, math.ceil(len(self.ids) / size))


def window_size(tokenizer) -> int:
    """Prompt tokens per window: the tokenizer's limit minus BOS and EOS (75 for CLIP)."""
    return int(tokenizer.model_max_length) - 2


def prompt_tokens(tokenizer, prompt: str, emphasis: bool) -> TokenRow:
    """Token ids of ``prompt`` without special tokens; with ``emphasis`` the A1111 syntax is parsed
    and each piece is tokenized on its own, its tokens carrying the piece's weight."""
    prompt = rewrite_prompt(tokenizer, prompt)
    pieces = parse_emphasis(prompt) if emphasis else [(prompt, 1.0)]
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in pieces:
        if not text:
            continue
        piece_ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        ids.extend(piece_ids)
        weights.extend([weight] * len(piece_ids))
    return TokenRow(ids, weights)


def pack_windows(tokenizer, rows: list[TokenRow], n_windows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay ``rows`` out as ``n_windows`` windows each (tokens past the last window are dropped).

    Returns ``(ids, attention_mask, weights)``, each ``[batch, n_windows, window + 2]``; the
    mask is 1 on BOS, the tokens and EOS (as the tokenizer's own mask), weights are 1 outside
    the prompt tokens.
    """
    size = window_size(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    width = size + 2
    ids = torch.full((len(rows), n_windows, width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n_windows, width), dtype=torch.long)
    weights = torch.ones((len(rows), n_windows, width), dtype=torch.float32)
    for b, row in enumerate(rows):
        for w in range(n_windows):
            part = row.ids[w * size:(w + 1) * size]
            part_w = row.weights[w * size:(w + 1) * size]
            k = len(part)
            ids[b, w, 0] = bos
            if k:
                ids[b, w, 1:k + 1] = torch.tensor(part, dtype=torch.long)
                weights[b, w, 1:k + 1] = torch.tensor(part_w, dtype=torch.float32)
            ids[b, w, k + 1] = eos
            mask[b, w, :k + 2] = 1
    return ids, mask, weights
