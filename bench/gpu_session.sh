#!/usr/bin/env bash
# Issue 19 on a lent GPU, as one script: compiled vs eager pruned inference. Target: under 8 minutes in all
# (SESSION_S, default 450 s, bounds the timed part; every step prints its elapsed time).
#   1. bench/gpu_checks.py (~1 min): tiny models: every static-budget method runs a CUDA forward with no implicit
#      sync and no host-to-device copy; random pruning keeps the same tokens on CUDA as on the CPU; inductor-compiled
#      random pruning (default and reduce-overhead) matches eager, is compiled once and keeps its CUDA graphs. Also
#      the CUDA-only test of tests/test_pruning.py when pytest is installed.
#   2. bench/run_grid.py --grid static: ViT-B, 256 tokens, batch 1, keep rate 0.5, all six static methods
#      (topk random mean std evit_fuse tome), eager, torch.compile reduce-overhead (CUDA graphs: what a launch-bound
#      batch of one needs most, so before default) and default; AudioMAE first, then AST while time is left. Each
#      compiled group compiles 8 ViT-B models (unpruned, topk at keep rate 1.0, the six methods); their first calls
#      (compile times) are columns of their own. A group that fails is reported and the next one runs.
# Writes $OUT/gpu_grid.csv + gpu_grid.json (plus gpu_checks.txt, gpu_session.log) when $OUT is set, else
# results/bench/ (appending to the stored grid: its older eager rows count as compile "none").
#
# Not run yet: results/bench/gpu_grid.csv holds only eager rows from an earlier session (torch 2.11, H200,
# bench/gpu_eager_session.sh); compiled GPU rows are not measured until this script has run on a GPU.
#
# Python: the first of $PY, .venv/bin/python, python3, python that imports torch, timm, numpy, pandas and tqdm
# (the repository runs from source: PYTHONPATH, no install). Failing that: wheels in .whl/ are unpacked into
# /tmp/site (offline); failing that, a venv that sees the system's packages (--system-site-packages, so a system
# CUDA torch is kept) gets pyproject.toml's other dependencies from the package index (needs a network). A machine
# without any torch is refused with a message: a CUDA torch is gigabytes and this project never downloads it here.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-results/bench}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_session.log") 2>&1
SESSION_S=${SESSION_S:-450}
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[gpu_session $(elapsed)s] $*"; }
NEED="import torch, timm, numpy, pandas, tqdm"

usable() { [ -n "$1" ] && { [ -x "$1" ] || command -v "$1" >/dev/null 2>&1; } && "$1" -c "$NEED" >/dev/null 2>&1; }

find_python() {
  local c
  for c in "${PY:-}" .venv/bin/python python3 python; do
    if usable "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

make_python() {   # prints the Python to use, or fails with a reason
  local base
  base=$(command -v python3 || command -v python) || { echo "no python3 on this machine" >&2; return 1; }
  "$base" -c "import torch" 2>/dev/null || { echo "no torch importable by $base; install a CUDA torch first" >&2; return 1; }
  if compgen -G ".whl/*.whl" >/dev/null; then
    log "unpacking .whl/*.whl into /tmp/site (offline)" >&2
    "$base" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >&2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    usable "$base" && { echo "$base"; return 0; }
  fi
  log "making .venv-gpu (system site packages) with pyproject.toml's dependencies other than torch*" >&2
  "$base" -m venv --system-site-packages .venv-gpu >&2 || return 1
  local deps
  deps=$(.venv-gpu/bin/python - <<'PYEOF'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if not d.startswith("torch")))   # never replace the machine's CUDA torch
PYEOF
  ) || return 1
  # shellcheck disable=SC2086
  .venv-gpu/bin/python -m pip install -q $deps >&2 || return 1
  usable .venv-gpu/bin/python && echo .venv-gpu/bin/python
}

PY=$(find_python) || PY=$(make_python) || { log "no usable Python (see above); nothing measured"; exit 1; }
export PY PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log "python $PY: $("$PY" -c 'import sys, torch, timm; print(sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__, "cuda", torch.version.cuda)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || { log "no CUDA: stopping"; exit 1; }

# 1. Correctness before timing (a failure is reported and the grid still runs: its numbers then say what ran).
log "checks: bench/gpu_checks.py"
timeout 150 "$PY" bench/gpu_checks.py --methods random 2>&1 | tee "$OUT/gpu_checks.txt"
if "$PY" -c "import pytest" 2>/dev/null; then
  log "checks: CUDA test of tests/test_pruning.py"
  timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_pruning.py -k cuda 2>&1 | tail -3 | tee -a "$OUT/gpu_checks.txt"
fi

# 2. The grid, AudioMAE first. run_grid saves after every group and starts none past its deadline; timeout stops
#    a group that would run past the session's budget (its rows are then missing, the others kept).
grid() {   # family
  local left=$(( SESSION_S - $(elapsed) ))
  if [ "$left" -lt 60 ]; then log "grid $1: skipped, ${left}s left"; return 0; fi
  log "grid $1: eager, reduce-overhead, default (${left}s left)"
  timeout "$left" "$PY" bench/run_grid.py --device cuda --grid static --families "$1" \
    --compile none reduce-overhead default --deadline-s $(( left - 60 )) --out "$OUT/gpu_grid.csv" \
    || log "grid $1: stopped (exit $?)"
}
grid audiomae
grid ast
log "done: $OUT/gpu_grid.csv $OUT/gpu_grid.json $OUT/gpu_checks.txt"
