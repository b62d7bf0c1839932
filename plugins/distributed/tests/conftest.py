"""The distributed job: ONE launch of two gloo ranks on the CPU does the data-parallel ``kernel generate
--batch-file`` run, every context-parallel forward, the 2-step pipelines and a rank failure; the tests
compare what each rank saved with single-process runs made here.  The pipeline folders are built while
the ranks start up."""

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
    (root / "prompts.txt").write_text("\n".join(H.PROMPTS) + "\n")
    start = time.monotonic()
    procs = H.launch("_worker.py", str(root), KERNEL_DIST_TIMEOUT="60")
    try:
        H.tiny_pipeline_folders(root)
    finally:
        (root / "folders.ready").touch()
    ranks = H.wait_all(procs, timeout=240)
    seconds = time.monotonic() - start
    (rc0, out0, err0), (rc1, out1, err1) = ranks
    assert rc0 == 3 and rc1 != 0, f"rank 0: {rc0}\n{err0[-3000:]}\nrank 1: {rc1}\n{err1[-3000:]}"
    return dict(root=root, ranks=ranks, stdout=out0 + out1, seconds=seconds)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
