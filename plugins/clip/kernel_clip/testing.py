"""Tiny CLIP tokenizers and text encoders built locally, for tests (no downloads).

The tokenizer is a real ``CLIPTokenizer`` over a byte-level vocabulary of single characters
(each also in its end-of-word form) plus a few merges, so words cost several tokens and
long prompts are easy to make.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_MERGES = ["t h", "h e</w>", "a t</w>", "c at</w>", "o g</w>", "d og</w>", "i n", "e r"]


def _byte_chars() -> list[str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the others to code points 256+.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_clip_vocab(directory: str | os.PathLike) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a tiny CLIP BPE vocabulary into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = []
    for c in _byte_chars():
        tokens += [c, c + "</w>"]
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    return directory


def tiny_clip_tokenizer(directory: str | os.PathLike | None = None, model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A ``CLIPTokenizer`` over the tiny vocabulary (``pad_token="!"`` gives SD 2.x-style padding)."""
    from transformers import CLIPTokenizer

    directory = write_tiny_clip_vocab(directory or tempfile.mkdtemp(prefix="tiny-clip-"))
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=model_max_length, pad_token=pad_token)


def tiny_clip_text_config(tokenizer, projection_dim: int | None = None, hidden_size: int = 32, **overrides):
    from transformers import CLIPTextConfig

    kwargs = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
    )
    if projection_dim is not None:
        kwargs["projection_dim"] = projection_dim
    kwargs.update(overrides)
    return CLIPTextConfig(**kwargs)


def tiny_clip_text_model(tokenizer, seed: int = 0, with_projection: bool = False, **overrides):
    """A randomly initialised (seeded) tiny ``CLIPTextModel`` or ``CLIPTextModelWithProjection``."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    if with_projection:
        overrides.setdefault("projection_dim", 32)
    config = tiny_clip_text_config(tokenizer, **overrides)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()
