"""Diffusers' textual-inversion methods for pipelines with CLIP tokenizers and text encoders (SD 1.x/2.x, SDXL).

    pipe.load_textual_inversion("sd-concepts-library/cat-toy")              # Hub id, folder, file, dict, tensor
    pipe.load_textual_inversion("./charturnerv2.pt", token="charturnerv2")  # A1111 files
    pipe.load_textual_inversion(xl["clip_l"], token="unaesthetic", tokenizer=pipe.tokenizer,
                                text_encoder=pipe.text_encoder)
    pipe.load_textual_inversion(xl["clip_g"], token="unaesthetic", tokenizer=pipe.tokenizer_2,
                                text_encoder=pipe.text_encoder_2)
    image = pipe("a <cat-toy> on a mat", negative_prompt="unaesthetic").images[0]
    pipe.unload_textual_inversion()                                         # every token out again

A load reads and checks everything (layouts, names, widths, every target encoder) before it
changes anything, and puts back what it changed if a later step fails, so an error leaves the
tokenizers and encoders exactly as they were.  Multi-vector tokens reach the prompt through a
:mod:`kernel_clip` prompt rewriter (:func:`kernel_textual_inversion.vocab.expand_prompt`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any, Iterator

import torch

from kernel_textual_inversion import formats, vocab

logger = logging.getLogger(__name__)

_PAIRS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
_HUB_ARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "revision")


def _token_list(token: Any, n_sources: int) -> list[str | None]:
    """Diffusers' rules: no token, one token per source, or (one source) one token per vector."""
    if token is None:
        return [None] * n_sources
    tokens = [token] if isinstance(token, str) else token
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"token must be a str, a non-empty list of str, or None; got {token!r}")
    tokens = list(tokens)
    empty = [t for t in tokens if not t.strip()]
    if empty:
        raise ValueError(f"token must not be empty or blank, got {token!r}")
    repeated = sorted(t for t, c in Counter(tokens).items() if c > 1)
    if repeated:
        raise ValueError(f"token lists {repeated} more than once: {tokens}")
    if n_sources > 1 and len(tokens) != n_sources:
        raise ValueError(f"pretrained_model_name_or_path has {n_sources} embeddings but token has {len(tokens)} "
                         f"entries ({tokens}); give one token per embedding, or token=None to use the stored names")
    return tokens


class TextualInversionLoaderMixin:
    """``load_textual_inversion``, ``unload_textual_inversion``, ``maybe_convert_prompt``: Diffusers' arguments."""

    # ------------------------------------------------------------------ prompts
    def maybe_convert_prompt(self, prompt: str | list[str], tokenizer) -> str | list[str]:
        """``prompt`` with each multi-vector token ``t`` written out as ``t t_1 ... t_{n-1}`` (the pipelines do
        this on their own through kernel_clip; this is Diffusers' public method for other callers)."""
        if isinstance(prompt, str):
            return vocab.expand_prompt(tokenizer, prompt)
        return [vocab.expand_prompt(tokenizer, p) for p in prompt]

    # ------------------------------------------------------------------ targets
    def _ti_pairs(self) -> list[tuple[Any, Any, str, str]]:
        """The pipeline's ``(tokenizer, text_encoder, tokenizer name, encoder name)`` pairs, in SDXL order."""
        return [(getattr(self, t, None), getattr(self, e, None), t, e) for t, e in _PAIRS]

    def _ti_explicit(self, tokenizer, text_encoder) -> tuple[Any, Any, str, str]:
        tok = tokenizer if tokenizer is not None else getattr(self, "tokenizer", None)
        enc = text_encoder if text_encoder is not None else getattr(self, "text_encoder", None)
        return (tok, enc, vocab.describe(tok, self, "tokenizer"), vocab.describe(enc, self, "text_encoder"))

    def _ti_check_pair(self, pair: tuple[Any, Any, str, str]) -> None:
        tok, enc, tok_name, enc_name = pair
        for value, name, arg in ((tok, tok_name, "tokenizer"), (enc, enc_name, "text_encoder")):
            if value is None:
                raise ValueError(f"{type(self).__name__} has no {name}; pass {arg}=... to load_textual_inversion")
        vocab.check_aligned(tok, enc, f"{tok_name} / {enc_name}")

    @contextlib.contextmanager
    def _ti_hooks_paused(self) -> Iterator[None]:
        """Take CPU-offload hooks off while the embedding matrices change (sequential offload keeps the weights
        elsewhere), then put the same offload back."""
        kind = getattr(self, "_offload_kind", None)
        if kind not in ("model", "sequential"):
            yield
            return
        device = self._offload_device
        self.remove_all_hooks()
        try:
            yield
        finally:
            enable = self.enable_model_cpu_offload if kind == "model" else self.enable_sequential_cpu_offload
            enable(device=device)

    # ------------------------------------------------------------------ loading
    def load_textual_inversion(self, pretrained_model_name_or_path: Any, token: str | list[str] | None = None,
                               tokenizer=None, text_encoder=None, **kwargs: Any) -> None:
        """Add textual-inversion tokens and their embeddings to a tokenizer and its text encoder.

        ``pretrained_model_name_or_path``: a file (``.safetensors``, ``.bin``, A1111 ``.pt``), a folder or
        Hub repo id (``learned_embeds.safetensors`` / ``.bin``, or ``weight_name``), a state dict, a tensor,
        or a list of them.  ``token`` overrides the stored name: one per embedding, or for a single
        ``[n, width]`` embedding one per vector.  ``tokenizer`` / ``text_encoder`` default to the pipeline's
        first pair; an SDXL file (``clip_l`` and ``clip_g``) given without them loads into both.  Hub
        arguments: ``weight_name``, ``subfolder``, ``use_safetensors``, ``cache_dir``, ``revision``,
        ``hf_token``, ``local_files_only``, ``force_download``, ``proxies`` (``HF_HUB_OFFLINE`` is honoured).
        """
        weight_name = kwargs.pop("weight_name", None)
        subfolder = kwargs.pop("subfolder", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        kwargs.pop("mirror", None)  # Diffusers accepts and ignores it
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_ARGS if k in kwargs}
        if "hf_token" in kwargs:
            hub_kwargs["token"] = kwargs.pop("hf_token")
        if kwargs:
            raise TypeError(f"load_textual_inversion() got unexpected keyword arguments {sorted(kwargs)}; accepted: "
                            "weight_name, subfolder, use_safetensors, hf_token, mirror, " + ", ".join(_HUB_ARGS))

        sources = list(pretrained_model_name_or_path) if isinstance(pretrained_model_name_or_path, (list, tuple)) \
            else [pretrained_model_name_or_path]
        if not sources:
            raise ValueError("pretrained_model_name_or_path is an empty list")
        tokens = _token_list(token, len(sources))
        explicit = tokenizer is not None or text_encoder is not None
        if explicit:
            self._ti_check_pair(self._ti_explicit(tokenizer, text_encoder))

        loaded = [formats.load(s, i, len(sources), weight_name, subfolder, use_safetensors, dict(hub_kwargs))
                  for i, s in enumerate(sources)]
        entries = self._ti_entries(loaded, tokens)
        plan = self._ti_plan(entries, self._ti_explicit(tokenizer, text_encoder) if explicit else None)

        with self._ti_hooks_paused():
            snapshots = [vocab.Snapshot(tok, enc) for tok, enc, _, _ in plan]
            try:
                for tok, enc, names, vectors in plan:
                    vocab.add_tokens(tok, enc, names, vectors)
            except BaseException:
                for snapshot in reversed(snapshots):
                    snapshot.restore()
                raise
        for tok, _, names, _ in plan:
            logger.info("loaded textual-inversion tokens %s into %s", names, vocab.describe(tok, self, "the tokenizer"))

    @staticmethod
    def _ti_entries(loaded: list[list[formats.Embedding]], tokens: list[str | None]) -> list[tuple]:
        """``(encoder index or None, token, vectors [n, width], source)`` for every embedding, named."""
        per_vector = len(loaded) == 1 and len(tokens) > 1
        entries = []
        for embeddings, given in zip(loaded, tokens):
            for emb in embeddings:
                if per_vector:
                    if emb.vectors.shape[0] != len(tokens):
                        raise ValueError(f"{emb.source}: holds {emb.vectors.shape[0]} vectors but token lists "
                                         f"{len(tokens)} names ({tokens}); give one token per vector, or one token")
                    entries += [(emb.encoder, t, v[None], emb.source) for t, v in zip(tokens, emb.vectors)]
                    continue
                name = given or emb.token
                if name is None:
                    raise ValueError(f"{emb.source}: has no token name stored; pass token=...")
                if given and emb.token and emb.token != given:
                    logger.info("%s: the stored token %r is replaced by token=%r", emb.source, emb.token, given)
                entries.append((emb.encoder, name, emb.vectors, emb.source))
        return entries

    def _ti_plan(self, entries: list[tuple], explicit: tuple | None) -> list[tuple]:
        """Check every entry against its target pair; ``[(tokenizer, encoder, token names, vectors)]`` per pair."""
        pairs = [explicit] if explicit is not None else self._ti_pairs()
        groups: dict[int, list[tuple]] = {}
        for encoder, name, vectors, source in entries:
            if encoder is not None and explicit is not None:
                raise ValueError(
                    f"{source}: holds SDXL embeddings ('clip_l' for tokenizer/text_encoder, 'clip_g' for "
                    "tokenizer_2/text_encoder_2); with tokenizer/text_encoder given, pass one part, e.g. "
                    "load_textual_inversion(state_dict['clip_g'], token=..., tokenizer=pipe.tokenizer_2, "
                    "text_encoder=pipe.text_encoder_2), or pass neither to load both")
            index = encoder or 0
            tok, enc, tok_name, enc_name = pairs[index]
            if explicit is None and (tok is None or enc is None):
                part = "the embedding" if encoder is None else f"its {('clip_l', 'clip_g')[encoder]} part"
                raise ValueError(f"{source}: {part} goes into {tok_name} / {enc_name}, which {type(self).__name__} "
                                 "does not have; pass tokenizer=... and text_encoder=...")
            groups.setdefault(index, []).append((name, vectors, source))

        plan = []
        for index, items in sorted(groups.items()):
            pair = pairs[index]
            self._ti_check_pair(pair)
            tok, enc, tok_name, enc_name = pair
            width, known = vocab.embedding_width(enc), tok.get_vocab()
            names, vectors = [], []
            for name, vecs, source in items:
                if vecs.shape[-1] != width:
                    raise ValueError(f"{source}: the embedding for {name!r} is {vecs.shape[-1]} wide but {enc_name} "
                                     f"takes {width}{self._ti_width_hint(vecs.shape[-1], enc)}")
                expanded = vocab.vector_tokens(name, vecs.shape[0])
                clash = [t for t in dict.fromkeys([*expanded, f"{name}_1"]) if t in known]
                if clash:
                    raise ValueError(f"{source}: token {name!r} is already in the vocabulary of {tok_name} ({clash}); "
                                     f"pass another token=..., or unload_textual_inversion({name!r}) first")
                names += expanded
                vectors.append(vecs)
            repeated = sorted(t for t, c in Counter(names).items() if c > 1)
            if repeated:
                raise ValueError(f"the tokens {repeated} would be added to {tok_name} twice; give each embedding its "
                                 "own token")
            plan.append((tok, enc, names, torch.cat(vectors, dim=0)))  # add_tokens casts to the encoder dtype
        return plan

    def _ti_width_hint(self, width: int, target) -> str:
        fits = [e for _, enc, _, e in self._ti_pairs() if enc is not None and enc is not target
                and vocab.embedding_width(enc) == width]
        if not fits:
            return ""
        other = fits[0]
        return (f" (it fits {other}: pass tokenizer=pipe.{dict((e, t) for t, e in _PAIRS)[other]}, "
                f"text_encoder=pipe.{other})")

    # ------------------------------------------------------------------ unloading
    def unload_textual_inversion(self, tokens: str | list[str] | None = None, tokenizer=None,
                                 text_encoder=None) -> None:
        """Remove textual-inversion tokens (a multi-vector token with all its vectors) and their embedding rows.

        ``tokens=None`` removes every added, non-special token, as Diffusers does.  Without ``tokenizer`` /
        ``text_encoder`` the tokens go from every pair of the pipeline (both of SDXL's); a named token that
        is in none of them is a ``ValueError`` and nothing is removed.
        """
        if tokens is not None and not isinstance(tokens, str) and not (
                isinstance(tokens, (list, tuple)) and all(isinstance(t, str) for t in tokens)):
            raise TypeError(f"tokens must be a str, a list of str, or None; got {tokens!r}")
        names = [tokens] if isinstance(tokens, str) else (list(tokens) if tokens else None)
        if tokenizer is not None or text_encoder is not None:
            pairs = [self._ti_explicit(tokenizer, text_encoder)]
            self._ti_check_pair(pairs[0])
        else:
            pairs = [p for p in self._ti_pairs() if p[0] is not None and p[1] is not None]
            if not pairs:
                raise ValueError(f"{type(self).__name__} has no tokenizer and text_encoder; pass them")

        plan, found = [], set()
        for tok, enc, _, _ in pairs:
            added = vocab.added_tokens(tok)
            if names is None:
                remove = list(added)
            else:
                remove = []
                for name in names:
                    if name in added:
                        found.add(name)
                        remove += vocab.chain(name, added)
            if remove:
                plan.append((tok, enc, list(dict.fromkeys(remove))))
        if names is not None and set(names) - found:
            loaded = sorted({t for tok, *_ in pairs for t in vocab.added_tokens(tok)})
            raise ValueError(f"tokens {sorted(set(names) - found)} are not loaded; loaded tokens: {loaded}")

        with self._ti_hooks_paused():
            snapshots = [vocab.Snapshot(tok, enc) for tok, enc, _ in plan]
            try:
                for tok, enc, remove in plan:
                    vocab.remove_tokens(tok, enc, remove)
            except BaseException:
                for snapshot in reversed(snapshots):
                    snapshot.restore()
                raise
