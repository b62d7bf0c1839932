#!/usr/bin/env bash
# GPU benchmarks against Diffusers in one run of under 8 minutes (issue 8; video and two-stage rows: issues 17, 18);
# see benchmarks/GPU.md.
#
#   bash benchmarks/gpu.sh [gpu_bench.py options]       e.g. --only unet,compile
#
# Needs an NVIDIA card and python3 with torch, transformers, accelerate and safetensors; no network.
# Installs the kernel and the plugins the benchmarks use (editable, no dependencies), and Diffusers
# plus any missing pure-Python dependencies from the wheels in .whl/ when that folder exists.
# Prints one table; with $OUT set, writes $OUT/gpu_bench.json and $OUT/gpu_bench.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${KERNEL_BENCH_BUDGET_S:-445}       # seconds for the whole run, installs included
SITE=${KERNEL_BENCH_SITE:-/tmp/kernel-bench-site}
PLUGINS=${KERNEL_BENCH_PLUGINS:-"layers unet autoencoders clip t5 guiders lora ip-adapter textual-inversion memory quant-bitsandbytes quant-gguf single-file distributed sd sd3 flux controlnet sched-common sched-euler sched-pndm sched-flow-match sched-ddim video cogvideo animatediff stable-cascade"}
GPU_TESTS=${KERNEL_GPU_TESTS:-0}          # 1: also run the CUDA-only tests first (needs every plugin)
[ "$GPU_TESTS" = 1 ] && PLUGINS=all
[ "$PLUGINS" = all ] && PLUGINS=$(cd plugins && ls -d */ | tr -d /)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INDEX=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 1. Wheels from .whl/: Diffusers and setuptools always, anything else only when that distribution is missing.
if compgen -G ".whl/*.whl" >/dev/null; then
  mapfile -t WHEELS < <($PY - .whl/*.whl <<'PYEOF'
import importlib.metadata as md
import sys
for path in sys.argv[1:]:
    dist = path.rsplit("/", 1)[-1].split("-")[0]
    try:
        md.version(dist)
        if dist.lower() not in ("diffusers", "setuptools"):  # pinned Diffusers; PEP 639 licence needs setuptools>=77
            continue
    except md.PackageNotFoundError:
        pass
    print(path)
PYEOF
)
  if [ ${#WHEELS[@]} -gt 0 ]; then
    echo "# installing into $SITE: ${WHEELS[*]##*/}"
    $PY -m pip install -q --no-deps --upgrade --target "$SITE" "${WHEELS[@]}" || echo "# wheel install failed"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "# no .whl/ folder: Diffusers columns only if Diffusers is installed already (see benchmarks/GPU.md)"
fi

# 2. The kernel and the plugins, editable, one pip call.
ARGS=(-e .)
for p in $PLUGINS; do ARGS+=(-e "plugins/$p"); done
[ "$GPU_TESTS" = 1 ] && ARGS+=(-e contracts)
if ! $PY -m pip install -q --no-deps --no-build-isolation "${ARGS[@]}"; then
  echo "# system site-packages refused; retrying with --user"
  $PY -m pip install -q --user --no-deps --no-build-isolation "${ARGS[@]}" || { echo "# install failed"; exit 1; }
fi

# 3. What is missing shows up here rather than as a stack trace later.
$PY - <<'PYEOF'
import importlib.util
need = ["torch", "numpy", "PIL", "pluggy", "tqdm", "safetensors", "huggingface_hub", "accelerate", "transformers"]
extra = ["diffusers", "requests", "regex", "filelock"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
absent = [m for m in extra if importlib.util.find_spec(m) is None]
if absent:
    print(f"# not importable (Diffusers columns may stay empty): {', '.join(absent)}")
if missing:
    raise SystemExit(f"# missing for the kernel: {', '.join(missing)}; add their wheels to .whl/ (benchmarks/GPU.md)")
import torch
print(f"# torch {torch.__version__}, CUDA {torch.version.cuda}, device "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
PYEOF
[ $? -eq 0 ] || exit 1

# 3b. Optional (KERNEL_GPU_TESTS=1): the tests that skip without CUDA (host-sync checks of every
#     scheduler, CUDA-graph pipeline switch, offload, CLI device), at most 150 s of the budget.
if [ "$GPU_TESTS" = 1 ]; then
  if $PY -c "import pytest, hypothesis" 2>/dev/null; then
    mapfile -t TEST_FILES < <(grep -rl "cuda.is_available" --include='test_*.py' plugins tests)
    echo "# CUDA-only tests from ${#TEST_FILES[@]} files"
    timeout -k 5 150 $PY -m pytest -q -rs -p no:cacheprovider -k "cuda or sync or graph" "${TEST_FILES[@]}" 2>&1 \
      | tail -40 | tee ${OUT:+$OUT/gpu_tests.txt}
  else
    echo "# KERNEL_GPU_TESTS=1 but pytest or hypothesis is missing: add their wheels to .whl/ (benchmarks/GPU.md)"
  fi
fi

# 4. The benchmarks, inside what is left of the budget (a hard stop 30 s after it).
LEFT=$((BUDGET - SECONDS))
echo "# set-up took ${SECONDS} s; benchmarks get ${LEFT} s"
LOG=${OUT:+$OUT/gpu_bench.txt}
timeout -k 5 $((LEFT + 30)) $PY benchmarks/gpu_bench.py --budget-s "$LEFT" "$@" 2>&1 | tee ${LOG:-/dev/null}
STATUS=${PIPESTATUS[0]}
# 5. Context parallel (issue 20) only where there are several GPUs; it says so and exits 0 otherwise.
if [ "$($PY -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)" -ge 2 ]; then
  timeout -k 5 300 $PY benchmarks/context_parallel.py 2>&1 | tee -a ${LOG:-/dev/null}
fi
exit "$STATUS"
