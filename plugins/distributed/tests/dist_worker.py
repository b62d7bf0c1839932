"""One rank of the distributed test job (started by conftest.py as torchrun would start it): data parallel
through ``kernel generate --batch-file``, context-parallel forwards, 2-step pipelines (once the test
process has written their folders), then a rank failure; results saved per rank under the folder given
on the command line, for the tests to compare with single-process runs."""

import sys
import time
from pathlib import Path

import numpy as np
import torch

import dist_helpers as H
from kernel_distributed import ContextParallelConfig, DistributedError, disable_parallelism, init_distributed


def main(root: Path) -> None:
    rank, world, _ = init_distributed()
    assert world == 2
    from kernel.cli import main as cli

    assert cli(["generate", "--batch-file", str(root / "prompts.txt"), "--out", str(root / "dp"), "--steps", "2",
                "--seed", "3", "--no-progress"]) == 0
    for name in H.MODELS:
        model, inputs = H.tiny_model(name), H.tiny_inputs(name)
        for mode, kwargs in H.MODES.items():
            model.enable_parallelism(config=ContextParallelConfig(**kwargs))
            torch.save(H.forward(model, inputs), root / f"cp_{name}_{mode}_rank{rank}.pt")
            disable_parallelism(model)

    import kernel

    deadline = time.monotonic() + 180
    while not (root / "folders.ready").exists():  # the test process builds them meanwhile
        if time.monotonic() > deadline:
            raise TimeoutError("the pipeline folders never appeared")
        time.sleep(0.2)
    for name in ("flux", "sd3"):
        pipe = kernel.load(root / f"{name}_pipe")
        for mode in ("ulysses", "ring"):
            pipe.transformer.enable_parallelism(config=ContextParallelConfig(**H.MODES[mode]))
            np.save(root / f"pipe_{name}_{mode}_rank{rank}.npy", H.run_pipeline(pipe, name))
            disable_parallelism(pipe.transformer)

    # a model with its own plan: one good forward on both ranks, then rank 1 fails
    model, plan, x = H.custom_model()
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2), cp_plan=plan)
    try:
        model(x)  # with gradients: refused before any collective
    except RuntimeError as err:
        assert "context parallelism is for inference" in str(err), err
        print(f"rank {rank}: training refused", flush=True)
    disable_parallelism(model)
    with torch.no_grad():
        expected = model(x)
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2), cp_plan=plan)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
        print(f"rank {rank}: custom plan forward matches", flush=True)
        if rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        time.sleep(1.0)  # let rank 1 exit first
        start = time.monotonic()
        try:
            model(x)
        except DistributedError as err:
            print(f"rank 0 stopped after {time.monotonic() - start:.1f} s: {err}", file=sys.stderr, flush=True)
            sys.exit(3)
    sys.exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
