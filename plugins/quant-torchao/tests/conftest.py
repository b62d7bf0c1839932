from __future__ import annotations

import pytest
import torch

from kernel_memory.testing import MODELS, save_tiny

@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """Each tiny model saved once, in float32."""
    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny(kind, root / kind) for kind in MODELS}
