"""The kernel contract suite on the CLIP conditioners (tiny tokenizers and text encoders)."""

from __future__ import annotations

import tempfile

import pytest
import torch

from kernel_clip import CLIPPromptConditioner, CLIPXLPromptConditioner
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
from kernel_contracts import ConditionerContract


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tokenizer(pad_token: str = "<|endoftext|>"):
    return tiny_clip_tokenizer(tempfile.mkdtemp(prefix="clip-contracts-"), pad_token=pad_token)


def sd_conditioner():
    tok = _tokenizer()
    return CLIPPromptConditioner(tok, tiny_clip_text_model(tok, seed=0, num_hidden_layers=2))


def sd_long_prompt_conditioner():
    tok = _tokenizer(pad_token="!")  # SD 2.x padding
    return CLIPPromptConditioner(tok, tiny_clip_text_model(tok, seed=1, num_hidden_layers=2), long_prompts=True)


def xl_conditioner():
    tok, tok_2 = _tokenizer(), _tokenizer(pad_token="!")
    te = tiny_clip_text_model(tok, seed=2, num_hidden_layers=2)
    te_2 = tiny_clip_text_model(tok_2, seed=3, num_hidden_layers=2, with_projection=True)
    return CLIPXLPromptConditioner(tok, te, tok_2, te_2)


class TestCLIPPromptConditionerContracts(ConditionerContract):
    component = sd_conditioner


class TestCLIPPromptConditionerLongPromptContracts(ConditionerContract):
    """``long_prompts=True`` encodes 75-token windows and concatenates them (A1111 style)."""

    component = sd_long_prompt_conditioner
    contract_options = {"long_prompt": "chunk"}


class TestCLIPXLPromptConditionerContracts(ConditionerContract):
    component = xl_conditioner


CONTRACT_COVERS = ["CLIPPromptConditioner", "CLIPXLPromptConditioner"]
