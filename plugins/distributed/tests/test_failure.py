"""A rank that raises ends the job with a clear error on rank 0 (no hang: timeouts are set), and a model
with its own Diffusers-style plan runs context-parallel."""

import re


def test_rank_failure_gives_a_clear_error_on_rank_0(job):
    (rc0, out0, err0), (rc1, out1, err1) = job["ranks"]
    assert "custom plan forward matches" in out0 and "custom plan forward matches" in out1
    assert "training refused" in out0 and "training refused" in out1
    assert rc1 != 0 and "rank 1 fails on purpose" in err1
    assert rc0 == 3
    message = re.search(r"rank 0 stopped after ([\d.]+) s: (.*)", err0)
    assert message, err0[-2000:]
    assert "Ulysses all-to-all" in message.group(2)
    assert "failed on rank 0 of 2: another rank raised, exited or did not answer" in message.group(2)
    assert float(message.group(1)) < 30  # KERNEL_DIST_TIMEOUT=60 bounds it; a dead peer is noticed at once
