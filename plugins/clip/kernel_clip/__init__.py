"""CLIP prompt conditioning for kernel (see :mod:`kernel_clip.conditioner`)."""

from kernel_clip.conditioner import (
    CLIPPromptConditioner,
    CLIPXLPromptConditioner,
    PromptOptions,
    encode_prompt,
    encode_prompt_xl,
)
from kernel_clip.emphasis import escape_emphasis, parse_emphasis
from kernel_clip.tokens import add_prompt_rewriter, remove_prompt_rewriter, rewrite_prompt

__all__ = [
    "CLIPPromptConditioner",
    "CLIPXLPromptConditioner",
    "PromptOptions",
    "add_prompt_rewriter",
    "encode_prompt",
    "encode_prompt_xl",
    "escape_emphasis",
    "parse_emphasis",
    "remove_prompt_rewriter",
    "rewrite_prompt",
]
