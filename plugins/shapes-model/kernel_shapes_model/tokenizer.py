"""A CLIP tokenizer for the caption vocabulary, built locally.

The files are those of OpenAI's CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``), so
``transformers.CLIPTokenizer`` reads them unchanged.  The vocabulary follows CLIP's layout:
the 256 byte symbols, the same with the end-of-word marker ``</w>``, one token per learned
merge, then ``<|startoftext|>`` and ``<|endoftext|>``.  The merges are learned by byte-pair
encoding (Sennrich et al. 2016) over the caption vocabulary until every caption word is one
token; any other word still tokenizes, into smaller pieces.
"""

from __future__ import annotations

import json
from pathlib import Path

from kernel_shapes_model.data import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EOW = "</w>"
#: Captions are at most 12 words; 16 positions leave room for BOS/EOS and a few extra words.
MODEL_MAX_LENGTH = 16


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE over ``words`` (each counted once) until every word is a single symbol."""
    corpus = [tuple(w[:-1]) + (w[-1] + EOW,) for w in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = max(counts, key=lambda p: (counts[p], p))  # ties broken deterministically
        merges.append(best)
        merged = best[0] + best[1]
        new_corpus = []
        for symbols in corpus:
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_corpus.append(tuple(out))
        corpus = new_corpus


def write_tokenizer_files(folder: str | Path, words: list[str] | None = None) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for ``words`` (default: the caption vocabulary)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(sorted(set(words or vocabulary())))
    base = _byte_symbols()
    tokens = base + [s + EOW for s in base] + [a + b for a, b in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_tokenizer(folder: str | Path, words: list[str] | None = None):
    """A ``transformers.CLIPTokenizer`` over the caption vocabulary, saved in ``folder``."""
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(folder, words)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=MODEL_MAX_LENGTH, pad_token=EOS)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
