"""New words for a tokenizer and its text encoder, added and removed together.

A textual-inversion token is an entry of the tokenizer's added vocabulary and one row of the
encoder's input embedding matrix at the same id.  :func:`add_tokens` appends both;
:func:`remove_tokens` deletes both and renumbers the added tokens after them, so ids and rows
stay aligned.  Each either completes or leaves the tokenizer and the encoder exactly as they
were.

A multi-vector embedding of ``n`` vectors is stored as the tokens ``t, t_1, ..., t_{n-1}``
(Diffusers' naming); :func:`expand_prompt` spells ``t`` in a prompt out as all of them.

Both kinds of transformers tokenizers are handled: tokenizers-backed ones (all of transformers 5,
the ``*Fast`` classes of 4.x), whose added vocabulary lives in the Rust tokenizer, and Python
("slow") ones, which keep it in ``_added_tokens_decoder`` / ``_added_tokens_encoder``.
"""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

import torch


# ---------------------------------------------------------------------------- reading
def added_tokens(tokenizer) -> dict[str, int]:
    """The tokenizer's added, non-special tokens (textual-inversion tokens among them): ``{token: id}``."""
    return {t.content: i for i, t in sorted(tokenizer.added_tokens_decoder.items()) if not t.special}


def vector_tokens(token: str, count: int) -> list[str]:
    """The token names of an embedding of ``count`` vectors: ``[token, token_1, ..., token_{count-1}]``."""
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def chain(token: str, known) -> list[str]:
    """``[token, token_1, token_2, ...]`` as far as the names run on in ``known`` (``token`` included)."""
    names, i = [token], 1
    while f"{token}_{i}" in known:
        names.append(f"{token}_{i}")
        i += 1
    return names


def multi_vector_tokens(tokenizer) -> dict[str, list[str]]:
    """``{t: [t, t_1, ...]}`` for each added token ``t`` that has a ``t_1`` beside it."""
    added = tokenizer.added_tokens_encoder
    return {token: chain(token, added) for token in added if f"{token}_1" in added}


def expand_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` with each multi-vector token ``t`` written out as ``t t_1 ... t_{n-1}``.

    The same rewrite as Diffusers' ``maybe_convert_prompt``, except that a literal ``t_1`` in the
    prompt stays as it is (``t`` is only replaced where no ``_<digit>`` follows it).
    """
    chains = multi_vector_tokens(tokenizer)
    present = [t for t in chains if t in prompt]
    if not present:
        return prompt
    longest_first = sorted(present, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(t) + r"(?!_\d)" for t in longest_first))
    return pattern.sub(lambda m: " ".join(chains[m.group(0)]), prompt)


# ---------------------------------------------------------------------------- saved state
class _TokenizerState:
    """What adding tokens changes in a tokenizer (serialised now), to put back."""

    def __init__(self, tokenizer) -> None:
        backend = getattr(tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "to_str"):
            self.backend_type, self.json = type(backend), backend.to_str()
            self.python = None
        elif isinstance(getattr(tokenizer, "_added_tokens_decoder", None), dict):
            self.backend_type = self.json = None
            self.python = (dict(tokenizer._added_tokens_decoder), dict(tokenizer._added_tokens_encoder))
        else:
            raise TypeError(f"{type(tokenizer).__name__} is not a transformers tokenizer; textual inversion needs one "
                            "(a CLIPTokenizer, say)")

    def restore(self, tokenizer) -> None:
        if self.json is not None:
            tokenizer._tokenizer = self.backend_type.from_str(self.json)
        else:
            decoder, encoder = self.python
            tokenizer._added_tokens_decoder = dict(decoder)
            tokenizer._added_tokens_encoder = dict(encoder)
            _refresh_python(tokenizer)


def _refresh_python(tokenizer) -> None:
    """Rebuild a Python tokenizer's caches of its added vocabulary (the trie only ever grows, so start anew)."""
    trie = getattr(tokenizer, "tokens_trie", None)
    if trie is not None:
        tokenizer.tokens_trie = type(trie)()
    for method in ("_update_trie", "_update_total_vocab_size"):
        if hasattr(tokenizer, method):
            getattr(tokenizer, method)()


class _EncoderState:
    """The encoder's input embedding parameter (the object itself) and the vocabulary size in its config."""

    def __init__(self, text_encoder) -> None:
        self.embedding = text_encoder.get_input_embeddings()
        self.weight = self.embedding.weight
        self.config = getattr(text_encoder, "config", None)
        self.vocab_size = getattr(self.config, "vocab_size", None)

    def restore(self) -> None:
        self.embedding.weight = self.weight
        self.embedding.num_embeddings = self.weight.shape[0]
        if self.vocab_size is not None:
            self.config.vocab_size = self.vocab_size


class Snapshot:
    """A tokenizer and text encoder as they are now; :meth:`restore` puts both back."""

    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer = tokenizer
        self._tokenizer_state = _TokenizerState(tokenizer)
        self._encoder_state = _EncoderState(text_encoder)

    def restore(self) -> None:
        self._tokenizer_state.restore(self.tokenizer)
        self._encoder_state.restore()


def _set_rows(text_encoder, rows: torch.Tensor) -> None:
    """Make ``rows`` the encoder's input embedding matrix, in place (the module stays, so hooks on it stay)."""
    embedding = text_encoder.get_input_embeddings()
    embedding.weight = torch.nn.Parameter(rows, requires_grad=embedding.weight.requires_grad)
    embedding.num_embeddings = rows.shape[0]
    config = getattr(text_encoder, "config", None)
    if getattr(config, "vocab_size", None) is not None:
        config.vocab_size = rows.shape[0]


def embedding_width(text_encoder) -> int:
    return int(text_encoder.get_input_embeddings().weight.shape[-1])


def check_aligned(tokenizer, text_encoder, name: str) -> None:
    """The encoder must have a row for every token id the tokenizer can produce."""
    rows = text_encoder.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise ValueError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the text encoder only {rows} "
                         "embedding rows; they do not belong together")


# ---------------------------------------------------------------------------- changing
def add_tokens(tokenizer, text_encoder, tokens: list[str], vectors: torch.Tensor) -> None:
    """Append ``tokens`` to the tokenizer and ``vectors`` (``[len(tokens), width]``) as their embedding rows.

    The encoder's matrix becomes ``len(tokenizer) + len(tokens)`` rows (rows past the tokenizer's
    length, which no token can reach, are dropped, as Diffusers' resize does).  The caller has
    checked the names and widths; if the tokenizer still does not hand out the expected ids,
    everything is put back and ``ValueError`` is raised.
    """
    start = len(tokenizer)
    snapshot = Snapshot(tokenizer, text_encoder)
    old = snapshot._encoder_state.weight
    try:
        tokenizer.add_tokens(list(tokens))
        ids = tokenizer.convert_tokens_to_ids(list(tokens))
        expected = list(range(start, start + len(tokens)))
        if ids != expected:
            raise ValueError(f"the tokenizer gave the new tokens {tokens} the ids {ids}, not {expected}; "
                             "nothing was added")
        new = vectors.detach().to(device=old.device, dtype=old.dtype)
        _set_rows(text_encoder, torch.cat([old.detach()[:start], new], dim=0))
    except BaseException:
        snapshot.restore()
        raise


def remove_tokens(tokenizer, text_encoder, tokens: list[str]) -> None:
    """Remove added ``tokens`` and their embedding rows; later added tokens move down to stay aligned.

    An added token whose id lies inside the model's own vocabulary (below ``tokenizer.vocab_size``)
    leaves the added vocabulary only: its row belongs to the model and stays.
    """
    ids = tokenizer.added_tokens_encoder
    removed = {ids[t] for t in tokens}
    if not removed:
        return
    dropped = sorted(i for i in removed if i >= tokenizer.vocab_size)  # the rows that go
    snapshot = Snapshot(tokenizer, text_encoder)
    tok_state = snapshot._tokenizer_state

    def new_id(old_id: int) -> int:
        return old_id - bisect.bisect_left(dropped, old_id)

    survivors = {t.content: new_id(i) for i, t in tokenizer.added_tokens_decoder.items() if i not in removed}
    try:
        if tok_state.json is not None:
            data = json.loads(tok_state.json)
            data["added_tokens"] = [{**entry, "id": new_id(entry["id"])} for entry in data.get("added_tokens", [])
                                    if entry["id"] not in removed]
            tokenizer._tokenizer = tok_state.backend_type.from_str(json.dumps(data))
        else:
            decoder = {new_id(i): t for i, t in tok_state.python[0].items() if i not in removed}
            tokenizer._added_tokens_decoder = decoder
            tokenizer._added_tokens_encoder = {t.content: i for i, t in decoder.items()}
            _refresh_python(tokenizer)
        got = dict(zip(survivors, tokenizer.convert_tokens_to_ids(list(survivors))))
        left = [t for t in tokens if ids[t] in dropped and t in tokenizer.get_vocab()]
        if got != survivors or left:
            raise ValueError(f"could not remove {tokens} from the tokenizer cleanly; nothing was removed")
        old = snapshot._encoder_state.weight.detach()
        keep = torch.ones(old.shape[0], dtype=torch.bool)
        keep[[i for i in dropped if i < old.shape[0]]] = False  # a row past the matrix was never reachable
        _set_rows(text_encoder, old[keep.to(old.device)])
    except BaseException:
        snapshot.restore()
        raise


def describe(obj: Any, owner: Any, default: str) -> str:
    """The attribute name under which ``owner`` (a pipeline) holds ``obj``, else ``default``."""
    if obj is None:
        return default
    for name, value in (getattr(owner, "components", None) or {}).items():
        if value is obj:
            return name
    return default
