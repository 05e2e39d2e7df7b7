#!/usr/bin/env bash
# The earlier GPU session (issues 4 and 8; eager models only), as one script (about 6 minutes on an H100/H200):
#   1. bench/gpu_grid.sh: fast-path check on CUDA + the pruned-inference timing grid (issue 8);
#   2. training speed of the same `tprune train` command on CUDA (issue 4), on synthetic clips (no audio
#      travels to the device), for the laptop-scale ViT-tiny and for ViT-B;
#   3. bench/gpu_profile.py: kernel launches and GPU busy time of a batch-1 pruned forward.
# The compiled-model session of issue 19 is bench/gpu_session.sh.
# Results go to $OUT (device tool) or results/bench/. Wheels for packages the device image lacks may be in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/bench}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PY=${PY:-python3} TPRUNE_CACHE=${TPRUNE_CACHE:-/tmp/tprune-cache} PYTHONUNBUFFERED=1
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"

bash bench/gpu_grid.sh "$@" 2>&1 | tee "$OUT/gpu_grid.log"

train() {  # name, then tprune train flags
  local name=$1; shift
  "$PY" -c "import sys; from tprune_core.cli import main; sys.exit(main(sys.argv[1:]))" train \
    --dataset synthetic --protocol flavour=speech per_class=300 seconds=1.0 --frames 96 --device cuda --json "$@" \
    > "$OUT/train_$name.json" 2> "$OUT/train_$name.log" || { tail -20 "$OUT/train_$name.log"; return 1; }
  "$PY" - "$OUT/train_$name.json" "$name" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read()
d = json.loads(text[text.index("{"):])
last = d.get("history", [{}])[-1]
print(sys.argv[2], "train_seconds", d.get("train_seconds"), "steps", last.get("step"), "val", d.get("val_accuracy"),
      "test", d.get("test", {}).get("accuracy"))
PYEOF
}
train tiny --family ast --size tiny --epochs 5 --batch-size 64
train base --family ast --size base --epochs 3 --batch-size 64

# 3. Where a batch-1 pruned forward spends its time (kernel launches vs GPU busy time).
"$PY" bench/gpu_profile.py > "$OUT/gpu_profile.txt" 2>&1 || tail -20 "$OUT/gpu_profile.txt"
grep -E "wall .* ms" "$OUT/gpu_profile.txt" || true
