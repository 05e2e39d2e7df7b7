"""Pruned models under ``torch.compile(fullgraph=True)``: every static-budget method traces as one graph, matches
eager (outputs, kept positions, token counts), is compiled once rather than once per call, and ``random`` draws
the same tokens compiled and eager. Per-clip methods refuse with an error naming them.

Kept fast: a 4-block ViT-tiny on 4 x 4 = 16 patch tokens, ``backend="aot_eager"`` (dynamo and AOTAutograd trace
the graph; no code generation). The inductor and CUDA paths run in ``bench/gpu_session.sh`` on a GPU machine.
"""
import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tprune_core.models import create_model
from tprune_core.pruning import apply_pruning, call_count, last_forward, set_call_count
from tprune_core.rules import FIXED_BUDGET, PER_CLIP

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["ast", "audiomae"]   # ast: CLS + distillation token pooled; audiomae: mean pooling
FRAMES = MEL = 64
DROP_LOC = (1, 2)


def tiny(family, seed=0):
    torch.manual_seed(seed)
    m = create_model(family, "tiny", FRAMES, 5, mel=MEL, depth=4).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():   # attention far from uniform, so that the ranking methods have clear choices
        for blk in m.blocks:
            blk.attn.qkv.weight.copy_(torch.randn(blk.attn.qkv.weight.shape, generator=g) * 0.08)
    return m


def compiled(model):
    """A fresh fullgraph compile with static shapes (a changing Python value would show as a recompile)."""
    torch._dynamo.reset()
    counters.clear()
    return torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)


def clips(seed=1, b=2):
    return torch.randn(b, FRAMES, MEL, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", FIXED_BUDGET)
def test_static_budget_method_compiles_fullgraph_and_matches_eager(family, method):
    eager = apply_pruning(tiny(family), method, 0.5, DROP_LOC)
    model = copy.deepcopy(eager)
    fast = compiled(model)
    with torch.inference_mode():
        for i in range(3):
            x = clips(seed=i)
            y, want = fast(x), eager(x)
            torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
            got, ref = last_forward(model), last_forward(eager)
            assert torch.equal(got.positions, ref.positions), (method, i)
            assert torch.equal(got.tokens, ref.tokens)
            assert got.calls == ref.calls == i + 1
    assert got.tokens[0, -1, 1] < got.tokens[0, 0, 0]        # it did prune
    assert counters["stats"]["unique_graphs"] == 1            # compiled once: no per-call recompile


def test_random_draws_repeat_compiled_with_reset_counter_and_differ_per_call():
    eager = apply_pruning(tiny("audiomae"), "random", 0.5, DROP_LOC, seed=3)
    model = copy.deepcopy(eager)
    fast = compiled(model)
    x = clips()
    with torch.no_grad():
        first = [(fast(x), last_forward(model).positions) for _ in range(2)]
        set_call_count(model, 0)
        again = [(fast(x), last_forward(model).positions) for _ in range(2)]
        ref = [(eager(x), last_forward(eager).positions) for _ in range(2)]
    assert call_count(model) == 2
    for (y1, p1), (y2, p2), (y3, p3) in zip(first, again, ref):
        assert torch.equal(p1, p2) and torch.equal(p1, p3)     # same seed and counter: same tokens
        torch.testing.assert_close(y1, y3, rtol=1e-5, atol=1e-5)
    assert not torch.equal(first[0][1], first[1][1])           # the next call draws anew
    assert not torch.equal(first[0][1][0], first[0][1][1])     # and each clip has its own draw
    assert counters["stats"]["unique_graphs"] == 1             # resetting the counter does not recompile


@pytest.mark.parametrize("method", sorted(PER_CLIP))
def test_per_clip_method_under_fullgraph_compile_names_itself(method):
    options = {"lo": -1.0, "hi": 1.0} if method == "intensity_range" else {}
    model = apply_pruning(tiny("audiomae"), method, 0.5, DROP_LOC, **options)
    with pytest.raises(Exception, match=f"{method}: its token budget depends on the clip"), torch.no_grad():
        compiled(model)(clips())
