"""One rank of the distributed test job (started by torchrun from the tests): data parallel through
``kernel generate --batch-file``, then context-parallel forwards and 2-step pipelines; results saved
per rank under the folder given on the command line, for the test process to compare."""

import sys
from pathlib import Path

import numpy as np
import torch

import dist_helpers as H
from kernel_distributed import ContextParallelConfig, disable_parallelism, init_distributed


def main(root: Path, parts: set[str]) -> None:
    rank, world, _ = init_distributed()
    assert world == 2
    if "dp" in parts:
        from kernel.cli import main as cli

        assert cli(["generate", "--batch-file", str(root / "prompts.txt"), "--out", str(root / "dp"), "--steps", "2",
                    "--seed", "3", "--no-progress"]) == 0
    if "cp" in parts:
        for name in H.MODELS:
            model, inputs = H.tiny_model(name), H.tiny_inputs(name)
            for mode, kwargs in H.MODES.items():
                model.enable_parallelism(config=ContextParallelConfig(**kwargs))
                torch.save(H.forward(model, inputs), root / f"cp_{name}_{mode}_rank{rank}.pt")
                disable_parallelism(model)
    if "pipe" in parts:
        import kernel

        for name in ("flux", "sd3"):
            pipe = kernel.load(root / f"{name}_pipe")
            for mode in ("ulysses", "ring"):
                pipe.transformer.enable_parallelism(config=ContextParallelConfig(**H.MODES[mode]))
                np.save(root / f"pipe_{name}_{mode}_rank{rank}.npy", H.run_pipeline(pipe, name))
                disable_parallelism(pipe.transformer)


if __name__ == "__main__":
    main(Path(sys.argv[1]), set(sys.argv[2].split(",")))
