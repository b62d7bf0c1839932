"""The prepared GPU rows keep working while no GPU is lent: the video and two-stage sections of
benchmarks/gpu_bench.py dry-run on the CPU at tiny shapes, and ours equals Diffusers on every row."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_bench.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not in this checkout")
def test_video_and_two_stage_rows_dry_run_on_the_cpu(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "gpu_bench.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--only", "video,two-stage",
                          "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    names = " | ".join(r["name"] for r in rows)
    for wanted in ("CogVideoX-2b transformer", "CogVideoX-2b VAE tiled decode", "UNetMotionModel",
                   "Stable Cascade lite stage C", "Stable Cascade lite stage B"):
        assert wanted in names, f"no {wanted!r} row in: {names}"
    for row in rows:
        assert row["ours"] is not None and row["diffusers"] is not None, row
        diff = re.search(r"max\|ours-diffusers\| ([0-9.e+-]+)", row["note"])
        assert diff is not None and float(diff.group(1)) < 1e-4, row
