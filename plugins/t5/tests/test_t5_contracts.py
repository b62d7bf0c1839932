"""The kernel contract suite on the T5 conditioner (tiny tokenizer and encoder)."""

from __future__ import annotations

import pytest
import torch

from kernel_contracts import ConditionerContract
from kernel_t5 import T5PromptConditioner
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t5_conditioner():
    tok = tiny_t5_tokenizer()
    return T5PromptConditioner(tok, tiny_t5_encoder(tok, d_model=16), max_sequence_length=24)


class TestT5PromptConditionerContracts(ConditionerContract):
    component = t5_conditioner


CONTRACT_COVERS = ["T5PromptConditioner"]
