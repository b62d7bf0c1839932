"""Prompt conditioning with CLIP text encoders (Radford et al. 2021) for Stable Diffusion.

Two ``encode_prompt`` functions usable without a pipeline:

* :func:`encode_prompt` - SD 1.x / 2.x: one ``CLIPTextModel``; the last hidden state after
  the final layer norm, or with ``clip_skip=k`` the hidden state ``k`` layers earlier (then
  the final layer norm).  Returns ``(prompt_embeds, negative_prompt_embeds)``.
* :func:`encode_prompt_xl` - SDXL (Podell et al. 2023): ``CLIPTextModel`` and
  ``CLIPTextModelWithProjection``; the penultimate hidden states of both, concatenated on the
  feature axis, and the projected pooled output of the second.  Returns
  ``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)``.
  With ``force_zeros_for_empty_prompt`` and no negative prompt the negatives are zeros.

Both give the same numbers as Diffusers' pipelines by default.  Two switches go beyond
Diffusers (both off by default, set through :class:`PromptOptions`):

``long_prompts``
    A prompt longer than the tokenizer's limit (75 tokens between BOS and EOS) is split into
    consecutive 75-token windows; each is wrapped in BOS/EOS, padded to 77 and encoded on its
    own, and the embeddings are concatenated along the sequence axis (``[B, 77 * k, D]``), as
    AUTOMATIC1111's webui does.  Prompt and negative prompt (and SDXL's two encoders) get the
    same number of windows, shorter ones padded with empty windows.  SDXL's pooled embedding
    comes from the first window.  Without it, prompts are truncated (with a logged warning).
``emphasis``
    The A1111 syntax ``(word)``, ``[word]``, ``(word:1.3)`` (see :mod:`kernel_clip.emphasis`).
    Each token's embedding is multiplied by its weight, then the window is rescaled so its
    mean equals the mean before weighting (A1111's "original" emphasis).  The mean is restored
    per prompt and window (A1111 does it per window over the whole batch), so a prompt's
    embeddings do not depend on what else is in the batch.  Pooled embeddings are not weighted.

``lora_scale`` multiplies the weight of the active LoRA layers of the text encoder(s) while the
prompt is encoded, as Diffusers does (:func:`kernel_layers.adapters.adapter_scale`); without adapter layers
it changes nothing.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from kernel_layers.adapters import adapter_scale
from kernel_clip.tokens import TokenRow, pack_windows, prompt_tokens, rewrite_prompt, window_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptOptions:
    """Extensions beyond Diffusers' prompt encoding (both off = Diffusers' numbers)."""

    long_prompts: bool = False
    emphasis: bool = False

    @property
    def plain(self) -> bool:
        return not (self.long_prompts or self.emphasis)


DEFAULT_OPTIONS = PromptOptions()


# ---------------------------------------------------------------------------- helpers
def _as_list(prompt: Any, name: str) -> list[str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"{name} must be a str or a list of str, got {type(prompt).__name__}")


def _uses_mask(text_encoder) -> bool:
    return bool(getattr(text_encoder.config, "use_attention_mask", False))


def _encoder_forward(text_encoder, ids, mask, layer: str, clip_skip: int | None):
    """Run the encoder; return ``(hidden states [N, L, D], pooled [N, P] or None)``.

    ``layer="last"``: SD's choice (final hidden state, or ``clip_skip`` layers earlier + final
    layer norm).  ``layer="penultimate"``: SDXL's choice (hidden state ``clip_skip + 2`` from the
    end, no final norm).
    """
    if layer == "last" and clip_skip is None:
        out = text_encoder(ids, attention_mask=mask)
        return out[0], None
    out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
    pooled = out[0] if out[0].ndim == 2 else None
    if layer == "last":
        # transformers 5 flattened CLIPTextModel (no ``.text_model``); 4.x nests it.
        body = getattr(text_encoder, "text_model", text_encoder)
        hidden = body.final_layer_norm(out.hidden_states[-(clip_skip + 1)])
    else:
        hidden = out.hidden_states[-((clip_skip or 0) + 2)]
    return hidden, pooled


def _apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale token embeddings by their weights, then restore each window's mean.

    ``hidden`` is ``[B, W, 77, D]``, ``weights`` ``[B, W, 77]``.
    """
    weights = weights.to(device=hidden.device, dtype=hidden.dtype)
    before = hidden.mean(dim=(2, 3), keepdim=True)
    weighted = hidden * weights.unsqueeze(-1)
    after = weighted.mean(dim=(2, 3), keepdim=True)
    return weighted * (before / after)


def _encode_plain(tokenizer, text_encoder, prompts, max_length, device, layer, clip_skip, use_mask, warn):
    """Diffusers' path: one padded, truncated sequence per prompt."""
    prompts = [rewrite_prompt(tokenizer, p) for p in prompts]
    batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    if warn:
        limit = tokenizer.model_max_length
        full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] >= batch.input_ids.shape[-1] and not torch.equal(full, batch.input_ids):
            dropped = tokenizer.batch_decode(full[:, limit - 1:-1])
            logger.warning(
                "prompt truncated to %d tokens (enable long_prompts to keep it all); dropped: %s", limit, dropped
            )
    mask = batch.attention_mask.to(device) if use_mask else None
    return _encoder_forward(text_encoder, batch.input_ids.to(device), mask, layer, clip_skip)


def _encode_windows(tokenizer, text_encoder, rows: list[TokenRow], n_windows, device, layer, clip_skip, use_mask, emphasis):
    """Long-prompt / emphasis path: ``n_windows`` windows per prompt, concatenated."""
    ids, mask, weights = pack_windows(tokenizer, rows, n_windows)
    batch, windows, width = ids.shape
    flat_mask = mask.view(batch * windows, width).to(device) if use_mask else None
    hidden, pooled = _encoder_forward(text_encoder, ids.view(batch * windows, width).to(device), flat_mask, layer, clip_skip)
    hidden = hidden.view(batch, windows, width, hidden.shape[-1])
    if emphasis and bool((weights != 1).any()):
        hidden = _apply_emphasis(hidden, weights)
    hidden = hidden.reshape(batch, windows * width, hidden.shape[-1])
    if pooled is not None:
        pooled = pooled.view(batch, windows, -1)[:, 0]
    return hidden, pooled


def _rows(tokenizer, prompts, options: PromptOptions) -> list[TokenRow]:
    rows = [prompt_tokens(tokenizer, p, options.emphasis) for p in prompts]
    if not options.long_prompts:
        size = window_size(tokenizer)
        if any(len(r.ids) > size for r in rows):
            logger.warning("prompt truncated to %d tokens (enable long_prompts to keep it all)", size + 2)
    return rows


def _windows_needed(tokenizer, groups: Sequence[list[TokenRow] | None], options: PromptOptions, given_len: int | None) -> int:
    if not options.long_prompts:
        return 1
    size = window_size(tokenizer)
    needed = [r.windows(size) for rows in groups if rows for r in rows]
    if given_len is not None:
        needed.append(max(1, given_len // (size + 2)))
    return max(needed or [1])


def _negatives_for(batch_size, negative_prompt, name="negative_prompt") -> list[str]:
    """SD's rules: no negative -> empty strings; a str applies to the whole batch; a list must match."""
    if negative_prompt is None:
        return [""] * batch_size
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch_size
    negatives = _as_list(negative_prompt, name)
    if len(negatives) != batch_size:
        raise ValueError(
            f"{name} has {len(negatives)} entries but prompt has batch size {batch_size}; "
            f"give one {name} per prompt or a single str"
        )
    return negatives


def _check_types(prompt, negative_prompt) -> None:
    if prompt is not None and negative_prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(
            f"negative_prompt must have the same type as prompt ({type(prompt).__name__}), "
            f"got {type(negative_prompt).__name__}"
        )


def _repeat(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if t is None else t.repeat_interleave(n, dim=0)


def _scales_adapters(encoders_arg: str):
    """Run the function with the adapters of its ``encoders_arg`` argument scaled by its ``lora_scale``."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def scaled(*args, **kwargs):
            arguments = signature.bind_partial(*args, **kwargs).arguments
            with adapter_scale(arguments.get(encoders_arg), arguments.get("lora_scale")):
                return fn(*args, **kwargs)

        return scaled

    return wrap


# ---------------------------------------------------------------------------- SD 1.x / 2.x
@_scales_adapters("text_encoder")
def encode_prompt(
    tokenizer,
    text_encoder,
    prompt: str | list[str] | None,
    device: torch.device | str | None = None,
    num_images_per_prompt: int = 1,
    do_classifier_free_guidance: bool = True,
    negative_prompt: str | list[str] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    lora_scale: float | None = None,
    clip_skip: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    options: PromptOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SD 1.x/2.x prompt embeddings ``[B * num_images_per_prompt, 77 (* windows), D]``.

    ``negative_prompt_embeds`` is ``None`` without classifier-free guidance.  ``dtype`` is the
    embeddings' dtype when there is no text encoder (Diffusers uses the UNet's).
    """
    options = options or DEFAULT_OPTIONS
    device = torch.device(device) if device is not None else torch.device("cpu")
    prompts = _as_list(prompt, "prompt")
    if prompts is not None:
        batch_size = len(prompts)
    elif prompt_embeds is not None:
        batch_size = prompt_embeds.shape[0]
    else:
        raise ValueError("give prompt or prompt_embeds")
    need_negative = do_classifier_free_guidance and negative_prompt_embeds is None
    if need_negative:
        _check_types(prompt, negative_prompt)
        negatives = _negatives_for(batch_size, negative_prompt)
    if (prompt_embeds is None or need_negative) and (tokenizer is None or text_encoder is None):
        raise ValueError("a tokenizer and text_encoder are needed to encode text prompts; pass prompt_embeds instead")

    if options.plain:
        if prompt_embeds is None:
            prompt_embeds, _ = _encode_plain(
                tokenizer, text_encoder, prompts, tokenizer.model_max_length, device, "last", clip_skip,
                _uses_mask(text_encoder), warn=True,
            )
        if need_negative:
            negative_prompt_embeds, _ = _encode_plain(
                tokenizer, text_encoder, negatives, prompt_embeds.shape[1], device, "last", None,
                _uses_mask(text_encoder), warn=False,
            )
    else:
        pos_rows = _rows(tokenizer, prompts, options) if prompt_embeds is None else None
        neg_rows = _rows(tokenizer, negatives, options) if need_negative else None
        given = prompt_embeds.shape[1] if prompt_embeds is not None else None
        n = _windows_needed(tokenizer, [pos_rows, neg_rows], options, given)
        if given is not None and given != n * tokenizer.model_max_length and need_negative:
            raise ValueError(
                f"prompt_embeds has {given} positions but the negative prompt needs {n} windows of "
                f"{tokenizer.model_max_length}; pass negative_prompt_embeds too"
            )
        if pos_rows is not None:
            prompt_embeds, _ = _encode_windows(
                tokenizer, text_encoder, pos_rows, n, device, "last", clip_skip, _uses_mask(text_encoder), options.emphasis
            )
        if neg_rows is not None:
            negative_prompt_embeds, _ = _encode_windows(
                tokenizer, text_encoder, neg_rows, n, device, "last", None, _uses_mask(text_encoder), options.emphasis
            )

    if text_encoder is not None:
        dtype = text_encoder.dtype
    elif dtype is None:
        dtype = prompt_embeds.dtype
    prompt_embeds = _repeat(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    if do_classifier_free_guidance:
        negative_prompt_embeds = _repeat(negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    return prompt_embeds, negative_prompt_embeds


# ---------------------------------------------------------------------------- SDXL
@_scales_adapters("text_encoders")
def encode_prompt_xl(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    prompt: str | list[str] | None,
    prompt_2: str | list[str] | None = None,
    device: torch.device | str | None = None,
    num_images_per_prompt: int = 1,
    do_classifier_free_guidance: bool = True,
    negative_prompt: str | list[str] | None = None,
    negative_prompt_2: str | list[str] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
    lora_scale: float | None = None,
    clip_skip: int | None = None,
    *,
    force_zeros_for_empty_prompt: bool = True,
    dtype: torch.dtype | None = None,
    options: PromptOptions | None = None,
):
    """SDXL prompt embeddings from ``(tokenizer, text_encoder)`` and ``(tokenizer_2, text_encoder_2)``.

    Pairs with a ``None`` member are skipped (the SDXL refiner has only the second encoder,
    which then reads ``prompt``).  ``dtype`` is used when ``text_encoder_2`` is missing.
    """
    options = options or DEFAULT_OPTIONS
    device = torch.device(device) if device is not None else torch.device("cpu")
    pairs = [(t, e) for t, e in zip(tokenizers, text_encoders) if t is not None and e is not None]
    prompts = _as_list(prompt, "prompt")
    if prompts is not None:
        batch_size = len(prompts)
    elif prompt_embeds is not None:
        batch_size = prompt_embeds.shape[0]
    else:
        raise ValueError("give prompt or prompt_embeds")

    zero_negatives = negative_prompt is None and force_zeros_for_empty_prompt
    need_negative = do_classifier_free_guidance and negative_prompt_embeds is None and not zero_negatives
    if (prompt_embeds is None or need_negative) and not pairs:
        raise ValueError("tokenizer_2 and text_encoder_2 are needed to encode text prompts; pass prompt_embeds instead")

    pos_texts = neg_texts = None
    if prompt_embeds is None:
        second = _as_list(prompt_2 or prompt, "prompt_2")
        pos_texts = [prompts, second][: len(pairs)]
    if need_negative:
        neg_1 = negative_prompt or ""
        neg_2 = negative_prompt_2 or neg_1
        neg_1 = [neg_1] * batch_size if isinstance(neg_1, str) else _as_list(neg_1, "negative_prompt")
        neg_2 = [neg_2] * batch_size if isinstance(neg_2, str) else _as_list(neg_2, "negative_prompt_2")
        if len(neg_1) != batch_size:
            raise ValueError(
                f"negative_prompt has {len(neg_1)} entries but prompt has batch size {batch_size}; "
                "give one negative_prompt per prompt or a single str"
            )
        neg_texts = [neg_1, neg_2][: len(pairs)]

    def run(texts_per_encoder, layer_skip, n, max_length, warn):
        hidden_parts, pooled = [], None
        for (tok, enc), texts in zip(pairs, texts_per_encoder):
            if options.plain:
                hidden, p = _encode_plain(tok, enc, texts, max_length or tok.model_max_length, device, "penultimate", layer_skip, False, warn)
            else:
                hidden, p = _encode_windows(
                    tok, enc, _rows(tok, texts, options), n, device, "penultimate", layer_skip, False, options.emphasis
                )
            if pooled is None and p is not None:
                pooled = p
            hidden_parts.append(hidden)
        return torch.cat(hidden_parts, dim=-1), pooled

    n = 1
    if not options.plain and pairs:
        groups = []
        for texts in (pos_texts, neg_texts):
            if texts is not None:
                groups += [[TokenRow(prompt_tokens(tok, p, options.emphasis).ids, []) for p in t]
                           for (tok, _), t in zip(pairs, texts)]
        given = prompt_embeds.shape[1] if prompt_embeds is not None else None
        n = _windows_needed(pairs[0][0], groups, options, given)

    if pos_texts is not None:
        prompt_embeds, pooled = run(pos_texts, clip_skip, n, None, True)
        if pooled_prompt_embeds is None:
            pooled_prompt_embeds = pooled
    if do_classifier_free_guidance and negative_prompt_embeds is None and zero_negatives:
        negative_prompt_embeds = torch.zeros_like(prompt_embeds)
        negative_pooled_prompt_embeds = (
            torch.zeros_like(pooled_prompt_embeds) if pooled_prompt_embeds is not None else None
        )
    elif need_negative:
        if not options.plain and prompt_embeds.shape[1] != n * pairs[0][0].model_max_length:
            raise ValueError(
                f"prompt_embeds has {prompt_embeds.shape[1]} positions but the negative prompt needs {n} "
                "windows; pass negative_prompt_embeds too"
            )
        negative_prompt_embeds, neg_pooled = run(neg_texts, None, n, prompt_embeds.shape[1], False)
        if negative_pooled_prompt_embeds is None:
            negative_pooled_prompt_embeds = neg_pooled

    if pooled_prompt_embeds is None:
        raise ValueError(
            "no pooled_prompt_embeds: pass them, or use a CLIPTextModelWithProjection as text_encoder_2"
        )
    second_encoder = text_encoders[-1] if len(text_encoders) else None
    if second_encoder is not None:
        dtype = second_encoder.dtype
    elif dtype is None:
        dtype = prompt_embeds.dtype
    prompt_embeds = _repeat(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    pooled_prompt_embeds = _repeat(pooled_prompt_embeds, num_images_per_prompt)
    if do_classifier_free_guidance:
        if negative_prompt_embeds is None or negative_pooled_prompt_embeds is None:
            raise ValueError("with guidance, pass both negative_prompt_embeds and negative_pooled_prompt_embeds")
        negative_prompt_embeds = _repeat(negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
        negative_pooled_prompt_embeds = _repeat(negative_pooled_prompt_embeds, num_images_per_prompt)
    return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds


# ---------------------------------------------------------------------------- objects
class CLIPPromptConditioner:
    """SD 1.x/2.x conditioner: a tokenizer and ``CLIPTextModel`` with :func:`encode_prompt`."""

    component_kind = "conditioner"

    def __init__(self, tokenizer, text_encoder, long_prompts: bool = False, emphasis: bool = False) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.options = PromptOptions(long_prompts=long_prompts, emphasis=emphasis)

    def encode_prompt(self, prompt, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None, **kwargs):
        kwargs.setdefault("options", self.options)
        return encode_prompt(self.tokenizer, self.text_encoder, prompt, device, num_images_per_prompt,
                             do_classifier_free_guidance, negative_prompt, **kwargs)


class CLIPXLPromptConditioner:
    """SDXL conditioner: two tokenizers and encoders with :func:`encode_prompt_xl`."""

    component_kind = "conditioner"

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2,
                 force_zeros_for_empty_prompt: bool = True, long_prompts: bool = False, emphasis: bool = False) -> None:
        self.tokenizers = [tokenizer, tokenizer_2]
        self.text_encoders = [text_encoder, text_encoder_2]
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.options = PromptOptions(long_prompts=long_prompts, emphasis=emphasis)

    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None, negative_prompt_2=None, **kwargs):
        kwargs.setdefault("options", self.options)
        kwargs.setdefault("force_zeros_for_empty_prompt", self.force_zeros_for_empty_prompt)
        return encode_prompt_xl(self.tokenizers, self.text_encoders, prompt, prompt_2, device, num_images_per_prompt,
                                do_classifier_free_guidance, negative_prompt, negative_prompt_2, **kwargs)
