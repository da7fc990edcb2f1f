#!/usr/bin/env bash
# The checks a session with an NVIDIA GPU runs: the GPU tests, then the learner benchmark on CUDA.
#
#   bash benchmarks/gpu/check.sh [OUT_DIR]
#
# Needs Python 3.11+ and a GPU that torch can see. It runs with .venv's Python where there is
# one, else with python3 (or $PYTHON) when that imports torch, numpy, river and pytest (the
# package itself is taken from this tree), else it makes .venv with `make install` (the pinned
# torch build carries the CUDA libraries). It writes OUT_DIR/gpu-tests.txt (pytest's output) and OUT_DIR/gpu-bench.md (the learner
# table, CUDA rows and CPU rows side by side), and exits non-zero if torch sees no GPU or a GPU
# test fails. About 5 minutes on an H200 once torch is installed; the install takes longer.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
python=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then
  python=.venv/bin/python
elif ! "$python" -c "import torch, numpy, river, pytest" 2>/dev/null; then
  make install >/dev/null
  python=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU: nothing to check here")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
PY
status=0
"$python" -m pytest -p no:cacheprovider -q -rs tests/unit/learner/test_cuda_learner.py \
    tests/unit/learner/test_placement.py 2>&1 | tee "$out/gpu-tests.txt" || status=$?
rm -f "$out/gpu-bench.md"
"$python" benchmarks/bench_learner.py --device auto --keys 1,1000,100000 --repeats 3 \
    --markdown "$out/gpu-bench.md" || status=$?
echo "results in $out/ (exit $status)"
exit "$status"
