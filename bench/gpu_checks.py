"""Correctness checks of compiled pruning on a GPU, before bench/gpu_session.sh times anything (about a minute).

    python bench/gpu_checks.py                      # on CUDA, inductor (what gpu_session.sh runs)
    python bench/gpu_checks.py --device cpu --backend aot_eager --modes default   # the same logic on a CPU

On tiny 4-block models (16 patch tokens), for both families:
1. every static-budget method runs a forward with no implicit sync (``torch.cuda.set_sync_debug_mode("error")``)
   and no host-to-device copy (the test of tests/test_pruning.py, without pytest);
2. random pruning keeps the same tokens on the GPU as on the CPU (the counter-based draw);
3. ``torch.compile(fullgraph=True)`` in each ``--modes`` (default, reduce-overhead) matches eager over three calls
   (outputs, kept positions, forward count) for ``--methods``, compiled once, and under reduce-overhead without
   inductor skipping CUDA graphs (the forward counter is a buffer mutated in place, which CUDA graph trees allow).
Prints one line per check and ends with ``checks: all passed`` or exits non-zero naming the failures.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from tprune_core.models import create_model  # noqa: E402
from tprune_core.pruning import apply_pruning, call_count, last_forward  # noqa: E402
from tprune_core.rules import FIXED_BUDGET  # noqa: E402

FAMILIES = ("audiomae", "ast")
T0 = time.time()
FAILED = []


def report(ok: bool, what: str):
    print(f"[{time.time() - T0:6.1f}s] {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        FAILED.append(what)


def tiny(family: str, method: str, device) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(family, "tiny", 64, 5, mel=64, depth=4).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # attention far from uniform: clear choices for the ranking methods
        for blk in m.blocks:
            blk.attn.qkv.weight.copy_(torch.randn(blk.attn.qkv.weight.shape, generator=g) * 0.08)
    return apply_pruning(m, method, 0.5, (1, 2)).to(device)


def clips(seed: int) -> torch.Tensor:
    return torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(seed))


def uploads_during(fn) -> list:
    """Host-to-device copies and constants built from Python data while ``fn`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._schema.name
            if name in ("aten::lift_fresh", "aten::lift_fresh_copy", "aten::scalar_tensor",
                        "aten::_local_scalar_dense"):
                seen.append(name)
            elif name == "aten::_to_copy" and "device" in kwargs and args[0].device.type == "cpu" and \
                    torch.device(kwargs["device"]).type != "cpu":
                seen.append(name)
            elif name == "aten::copy_" and args[1].device.type == "cpu" and args[0].device.type != "cpu":
                seen.append(name)
            return func(*args, **kwargs)

    with Spy():
        fn()
    return seen


def check_eager_device(device):
    x = clips(1).to(device)
    for family in FAMILIES:
        for method in FIXED_BUDGET:
            m = tiny(family, method, device)
            with torch.no_grad():
                m(x)                                  # first call: libraries initialise (and may sync) here
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    seen = uploads_during(lambda: m(x))
                    error = None
                except RuntimeError as exc:           # the sync debug mode raises on an implicit sync
                    seen, error = [], exc
                finally:
                    if device.type == "cuda":
                        torch.cuda.set_sync_debug_mode(0)
            report(not seen and error is None, f"{family} {method}: forward on {device.type} without sync or "
                                               f"upload {seen or ''}{error or ''}")


def check_random_across_devices(device):
    x = clips(2)
    for family in FAMILIES:
        here, cpu = tiny(family, "random", device), tiny(family, "random", "cpu")
        same = True
        with torch.no_grad():
            for _ in range(2):
                here(x.to(device))
                cpu(x)
                same &= torch.equal(last_forward(here).positions.cpu(), last_forward(cpu).positions)
        report(same, f"{family} random: the same kept tokens on {device.type} as on the CPU (2 calls)")


def check_compiled(device, mode: str, methods, backend: str):
    for family in FAMILIES:
        for method in methods:
            eager = tiny(family, method, device)
            model = copy.deepcopy(eager)
            torch._dynamo.reset()
            counters.clear()
            opts = {} if mode == "default" else {"mode": mode}
            fast = torch.compile(model, fullgraph=True, dynamic=False, backend=backend, **opts)
            ok, worst = True, 0.0
            t = time.time()
            with torch.inference_mode():
                for i in range(3):
                    x = clips(10 + i).to(device)
                    y, want = fast(x).clone(), eager(x)
                    ok &= torch.equal(last_forward(model).positions, last_forward(eager).positions)
                    worst = max(worst, (y - want).abs().max().item())
            ok &= worst < 1e-3 and call_count(model) == call_count(eager) == 3
            graphs = counters["stats"]["unique_graphs"]
            skips = counters["inductor"]["cudagraph_skips"]   # reduce-overhead: CUDA graphs left out, and why
            report(ok and graphs == 1 and skips == 0,
                   f"{family} {method}: compiled ({backend}, {mode}) == eager over 3 calls, max |diff| {worst:.1e}, "
                   f"{graphs} graph(s), {skips} CUDA-graph skip(s), {time.time() - t:.0f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--modes", nargs="+", default=["default", "reduce-overhead"])
    p.add_argument("--methods", nargs="+", default=["random", "tome", "topk"], choices=FIXED_BUDGET)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}", flush=True)
    check_eager_device(device)
    if device.type != "cpu":
        check_random_across_devices(device)
    for mode in args.modes:
        if mode == "reduce-overhead" and device.type != "cuda":
            print("reduce-overhead: CUDA graphs, skipped off CUDA")
            continue
        check_compiled(device, mode, args.methods, args.backend)
    print("checks: all passed" if not FAILED else f"checks: {len(FAILED)} FAILED: " + "; ".join(FAILED), flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
