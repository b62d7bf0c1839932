"""The distributed job: ONE launch of two gloo ranks on the CPU does the data-parallel ``kernel generate
--batch-file`` run, every context-parallel forward, the 2-step pipelines and a rank failure; the tests
compare what each rank saved with single-process runs made here.  The pipeline folders are built while
the ranks start up."""

import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_helpers as H  # noqa: E402


def _run_job(root: Path) -> dict:
    (root / "prompts.txt").write_text("\n".join(H.PROMPTS) + "\n")
    start = time.monotonic()
    procs = H.launch("dist_worker.py", str(root), KERNEL_DIST_TIMEOUT="60")
    try:
        H.tiny_pipeline_folders(root)
    finally:
        (root / "folders.ready").touch()
    ranks = H.wait_all(procs, timeout=240)
    return dict(root=str(root), ranks=ranks, seconds=time.monotonic() - start)


@pytest.fixture(scope="session")
def job(request, tmp_path_factory):
    """The job's results (``root``, per-rank ``(returncode, stdout, stderr)``, ``seconds``), run once per
    session; under pytest-xdist (``make test -n 2``) the workers share one run through a lock."""
    pytest.importorskip("diffusers")
    if getattr(request.config, "workerinput", None) is None:
        result = _run_job(tmp_path_factory.mktemp("distributed"))
    else:
        from filelock import FileLock

        shared = tmp_path_factory.getbasetemp().parent  # this run's folder, common to the xdist workers
        with FileLock(str(shared / "kernel-distributed-job.lock")):
            record = shared / "kernel-distributed-job.json"
            if record.is_file():
                result = json.loads(record.read_text())
            else:
                root = shared / "kernel-distributed-job"
                root.mkdir()
                result = _run_job(root)
                record.write_text(json.dumps(result))
    (rc0, out0, err0), (rc1, out1, err1) = result["ranks"]
    assert rc0 == 3 and rc1 != 0, f"rank 0: {rc0}\n{err0[-3000:]}\nrank 1: {rc1}\n{err1[-3000:]}"
    return dict(result, root=Path(result["root"]), stdout=out0 + out1)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
