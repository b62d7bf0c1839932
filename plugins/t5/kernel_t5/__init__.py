"""T5 prompt conditioning for kernel (see :mod:`kernel_t5.conditioner`)."""

from kernel_t5.conditioner import (
    T5_MAX_SEQUENCE_LENGTH,
    T5Encoding,
    T5PromptConditioner,
    as_prompt_list,
    check_max_sequence_length,
    encode_prompt_with_mask,
    repeat_per_prompt,
    t5_encode,
    t5_prompt_embeds,
)

__all__ = [
    "T5_MAX_SEQUENCE_LENGTH",
    "T5Encoding",
    "T5PromptConditioner",
    "as_prompt_list",
    "check_max_sequence_length",
    "encode_prompt_with_mask",
    "repeat_per_prompt",
    "t5_encode",
    "t5_prompt_embeds",
]
