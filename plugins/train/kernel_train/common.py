"""What both training scripts share: accelerator set-up, the data order, checkpoints, logging.

Exact resume: the batch for optimisation step ``s`` and all randomness of that step (noise,
timesteps, caption dropout) come from generators seeded by ``(seed, s)``, and everything else
that changes (weights, optimizer, LR schedule, EMA) is in the checkpoint, so a run resumed from
``checkpoint-s`` takes the same steps as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


def add_common_args(parser) -> None:
    parser.add_argument("--dataset", default="shapes", help="image folder with metadata.jsonl, or a dataset name")
    parser.add_argument("--dataset_length", type=int, default=None, help="items of a generated dataset")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--lr_scheduler", default="constant", choices=LR_SCHEDULERS)
    parser.add_argument("--lr_warmup_steps", type=int, default=0)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", default="auto", choices=MIXED_PRECISION,
                        help="auto: fp16 on CUDA, bf16 where CUDA supports it better, none on CPU")
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log_every", type=int, default=10)


def check_common_args(args) -> None:
    for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.resolution < 8 or args.resolution % 8:
        raise ValueError(f"--resolution must be a positive multiple of 8, got {args.resolution}")


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(args):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs"))
    return Accelerator(mixed_precision=resolve_mixed_precision(args.mixed_precision),
                       gradient_accumulation_steps=args.gradient_accumulation_steps, project_config=project)


def make_lr_scheduler(optimizer, name: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The generator for all randomness of one optimisation (micro-)step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 97 + micro) % (2**63))


def batch_indices(num_items: int, batch_size: int, seed: int, step: int, micro: int = 0, accum: int = 1) -> torch.Tensor:
    """Dataset indices of one micro-batch: epochs walk a seeded permutation."""
    flat = (step * accum + micro) * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(flat + len(out), num_items)
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
        out.extend(perm[offset: offset + batch_size - len(out)].tolist())
    return torch.tensor(out)


def find_checkpoint(output_dir: str, which: str | None) -> Path | None:
    if which is None:
        return None
    if which != "latest":
        path = Path(which)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {which!r} is not a checkpoint folder")
        return path
    found = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    state = json.loads((path / "training_state.json").read_text())
    return int(state["global_step"])


def save_checkpoint(accelerator, output_dir: str, step: int, limit: int | None, extra: dict | None = None) -> Path:
    out = Path(output_dir)
    if limit is not None:
        existing = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in existing[: max(0, len(existing) - limit + 1)]:
            shutil.rmtree(old, ignore_errors=True)
    path = out / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    (path / "training_state.json").write_text(json.dumps({"global_step": step, **(extra or {})}))
    return path


class MetricsLog:
    """Appends one JSON object per logged step to ``<output_dir>/train_log.jsonl``."""

    def __init__(self, output_dir: str, enabled: bool = True):
        self.path = Path(output_dir) / "train_log.jsonl"
        self.enabled = enabled
        self.start = time.time()

    def write(self, **values: Any) -> None:
        if not self.enabled:
            return
        values["elapsed_s"] = round(time.time() - self.start, 2)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(values) + "\n")
        print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()), flush=True)
