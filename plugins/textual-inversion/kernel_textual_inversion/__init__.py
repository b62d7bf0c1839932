"""Textual inversion for kernel pipelines (Gal et al. 2022, "An Image is Worth One Word", arXiv:2208.01618).

* :class:`TextualInversionLoaderMixin` - Diffusers' ``load_textual_inversion`` /
  ``unload_textual_inversion`` / ``maybe_convert_prompt``, mixed into the SD / SDXL pipelines.
* :mod:`kernel_textual_inversion.formats` - Diffusers, A1111 (``.pt``, ``.safetensors``) and SDXL layouts.
* :mod:`kernel_textual_inversion.vocab` - adding and removing tokens and embedding rows together.

Importing the package adds :func:`~kernel_textual_inversion.vocab.expand_prompt` to kernel_clip's
prompt rewriters, so every CLIP prompt (negative prompts, long prompts and emphasis included)
spells a multi-vector token out as all its vectors.  See ``docs/adapters.md``.
"""

from kernel_clip import add_prompt_rewriter

from kernel_textual_inversion.formats import TEXT_INVERSION_NAME, TEXT_INVERSION_NAME_SAFE
from kernel_textual_inversion.mixin import TextualInversionLoaderMixin
from kernel_textual_inversion.vocab import expand_prompt

add_prompt_rewriter(expand_prompt)

__all__ = ["TEXT_INVERSION_NAME", "TEXT_INVERSION_NAME_SAFE", "TextualInversionLoaderMixin", "expand_prompt"]
