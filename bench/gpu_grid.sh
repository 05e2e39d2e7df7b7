#!/usr/bin/env bash
# Issue 8's timing grid on a GPU, as one script: ViT-B (AudioMAE and AST), 64/256/512 tokens, batch 1 and 64,
# topk / tome / evit_fuse at keep rates 0.7 and 0.5, fp32 (batch 64 also bf16 autocast), plus a check that the fast
# path keeps the same tokens as explicit attention on this device. About 4 minutes on an H100.
# Writes $OUT/gpu_grid.csv and gpu_grid.json when $OUT is set, else results/bench/. Extra arguments go to
# run_grid.py (e.g. --quick, --families audiomae).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PYEOF'
# Same kept tokens on the GPU with and without the fast path (ViT-B, 256 tokens, batch 8, keep rate 0.5)?
import copy, torch
from tprune_core.models import create_model
from tprune_core.pruning import apply_pruning, record
torch.manual_seed(0)
x = torch.randn(8, 512, 128, device="cuda")
for family in ("audiomae", "ast"):
    for method in ("topk", "evit_fuse", "tome"):
        stock = create_model(family, "base", 512, 527).eval().cuda()
        fast = apply_pruning(copy.deepcopy(stock), method, 0.5)
        slow = apply_pruning(copy.deepcopy(stock), method, 0.5)
        for blk in slow.blocks:
            blk.attn.fused_attn = False
        with torch.inference_mode(), record(fast) as rf, record(slow) as rs:
            yf, ys = fast(x), slow(x)
        same = sum(torch.equal(a, b) for blk in rf.kept for a, b in zip(rf.kept[blk], rs.kept[blk]))
        total = sum(len(rf.kept[blk]) for blk in rf.kept)
        print(f"fastpath check cuda {family:8s} {method:9s}: kept sets identical {same}/{total}, "
              f"max |output diff| {(yf - ys).abs().max().item():.2e}")
PYEOF
"$PY" bench/run_grid.py --device cuda --compile none "$@"   # eager (compiled: bench/gpu_session.sh)
