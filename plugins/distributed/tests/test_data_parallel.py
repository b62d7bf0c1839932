"""Data parallel ``kernel generate --batch-file`` on two processes equals the single-process run."""

import numpy as np
import pytest
from PIL import Image

import dist_helpers as H
from kernel.cli import main
from kernel_distributed import shared_seed, split_prompts
from kernel_generate.command import parse_infotext


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), parse_infotext(im.info["parameters"])


def test_two_processes_write_each_picture_once_identical_to_one_process(job, tmp_path, one_thread):
    single = tmp_path / "single"
    assert main(["generate", "--batch-file", str(job["root"] / "prompts.txt"), "--out", str(single), "--steps", "2",
                 "--seed", "3", "--no-progress"]) == 0
    names = [f"{i:04d}.png" for i in range(len(H.PROMPTS))]
    assert sorted(p.name for p in (job["root"] / "dp").iterdir()) == names
    printed = [line for line in job["stdout"].splitlines() if line.endswith(".png")]
    assert sorted(printed) == sorted(str(job["root"] / "dp" / n) for n in names)  # each written by one rank
    for i, name in enumerate(names):
        theirs, (prompt, _, params) = _read(job["root"] / "dp" / name)
        ours, _ = _read(single / name)
        assert np.array_equal(theirs, ours)
        assert prompt == H.PROMPTS[i] and params["Seed"] == str(3 + i)


def test_helpers_in_one_process():
    assert split_prompts(["a", "b", "c"]) == [(0, "a"), (1, "b"), (2, "c")]
    assert shared_seed(7) == 7
    assert 0 <= shared_seed(None) < 2**32
    with pytest.raises(TypeError, match="prompts must be a list of strings"):
        split_prompts("abc")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        shared_seed(-1)


@pytest.mark.parametrize("extra, needle", [
    (["a prompt"], "cannot be combined with a prompt argument"),
    (["--batch", "2"], "cannot be combined with --batch"),
    (["--out", "x.png"], "needs --out DIR"),
])
def test_batch_file_bad_options(tmp_path, capsys, extra, needle):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    argv = ["generate", "--batch-file", str(prompts), "--no-progress"]
    argv += extra if "--out" in extra else ["--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_batch_file_missing_or_empty(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    for path, needle in ((tmp_path / "none.txt", "no such file"), (empty, "has no prompts")):
        assert main(["generate", "--batch-file", str(path), "--out", str(tmp_path / "o")]) == 2
        assert needle in capsys.readouterr().err
