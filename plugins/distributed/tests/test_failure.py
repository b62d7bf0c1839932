"""A rank that raises ends the job with a clear error on rank 0 (no hang: timeouts are set)."""

import subprocess
import sys
import time

import dist_helpers as H


def test_rank_failure_gives_a_clear_error_on_rank_0():
    port = H.free_port()
    procs = []
    start = time.monotonic()
    for rank in (0, 1):
        env = H.worker_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port), KERNEL_DIST_TIMEOUT="20")
        procs.append(subprocess.Popen([sys.executable, str(H.HERE / "_fail_worker.py"), "ulysses"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    elapsed = time.monotonic() - start
    (out0, err0), (out1, err1) = outputs
    assert "custom plan forward matches" in out0 and "custom plan forward matches" in out1
    assert procs[1].returncode != 0 and "rank 1 fails on purpose" in err1
    assert procs[0].returncode == 3, err0[-2000:]
    assert "failed on rank 0 of 2: another rank raised, exited or did not answer" in err0
    assert elapsed < 60
