import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # wuerstchen_fixtures (tests run with --import-mode=importlib)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tiny models run fastest single-threaded on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
