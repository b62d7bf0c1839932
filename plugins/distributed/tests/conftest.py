"""The distributed job: ONE torchrun launch of two gloo processes on the CPU does the data-parallel
``kernel generate --batch-file`` run, every context-parallel forward and the 2-step pipelines; the
tests compare what each rank saved with single-process runs made here."""

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_helpers as H  # noqa: E402


@pytest.fixture(scope="session")
def job(tmp_path_factory):
    pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("distributed")
    H.tiny_pipeline_folders(root)
    (root / "prompts.txt").write_text("\n".join(H.PROMPTS) + "\n")
    start = time.monotonic()
    result = H.torchrun("_worker.py", str(root), "dp,cp,pipe", KERNEL_DIST_TIMEOUT="60")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return dict(root=root, stdout=result.stdout, seconds=time.monotonic() - start)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
