"""Tiny T5 tokenizers and encoders built locally, for tests (no downloads)."""

from __future__ import annotations

import string


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A unigram ``T5TokenizerFast`` over single characters plus a few words (no sentencepiece file needed)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_letters]
    pieces += [("\u2581" + w, -1.0) for w in ("cat", "dog", "the", "a", "photo", "of")]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def tiny_t5_encoder(tokenizer, d_model: int = 32, seed: int = 0):
    """A seeded random two-layer ``T5EncoderModel`` sized for ``tokenizer``."""
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()
