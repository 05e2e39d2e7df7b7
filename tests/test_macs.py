"""MAC accounting: the analytic count equals torch's FlopCounterMode on real forwards of pruned and unpruned models,
and reproduces the paper's ViT-B figures."""
import math
from fractions import Fraction

import pytest
import torch

from tprune_core.errors import ConfigError
from tprune_core.macs import (Dims, count_macs, flop_counter_macs, macs_from_record, macs_from_tokens, model_macs,
                              token_schedule)
from tprune_core.models import create_model
from tprune_core.pruning import METHODS, PER_CLIP, apply_pruning, last_forward, record, remove_pruning

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["ast", "audiomae"]
FRAMES = 64          # tiny models, 4 x 8 = 32 patch tokens
CLASSES = 10
RATES = (0.9, 0.7, 0.5, 0.3)


def options(method, rate, x):
    """Method options that make the per-clip methods prune differently at every rate and in every clip."""
    if method == "intensity_range":   # keep patches above a quantile of the patch means
        return {"lo": float(x.unfold(1, 16, 16).unfold(2, 16, 16).mean(dim=(-1, -2)).quantile(1 - rate))}
    if method == "adaptive":
        return {"mass": rate}
    if method == "random":
        return {"seed": 5}
    return {}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_analytic_equals_flop_counter(family, method):
    torch.manual_seed(0)
    m = create_model(family, "tiny", FRAMES, CLASSES).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # attention far from uniform, so adaptive budgets differ between clips
        for blk in m.blocks:
            blk.attn.qkv.weight.copy_(torch.randn(blk.attn.qkv.weight.shape, generator=g) * 0.08)
    x = torch.randn(2, FRAMES, 128, generator=g)
    x[1] += torch.linspace(-1, 1, 128)          # clips differ, so per-clip methods keep different counts
    differs = False
    for rate in RATES:
        apply_pruning(m, method, rate, **options(method, rate, x))
        measured = flop_counter_macs(m, x)     # the whole batch
        per_clip = model_macs(m)               # from the token counts of that same forward
        if method in PER_CLIP:   # a batch runs padded to its largest clip; the count is what each clip runs alone
            measured = sum(flop_counter_macs(m, x[i:i + 1]) for i in range(len(x)))
        assert per_clip.shape == (2,)
        assert int(per_clip.sum()) == measured, (method, rate)
        if method not in PER_CLIP:           # fixed budget: the count by name says the same
            spec = count_macs(family, "tiny", FRAMES, rate, method=method, num_classes=CLASSES)
            assert 2 * spec["macs"] == measured, (method, rate)
            assert spec["tokens_per_block"] == last_forward(m).tokens[0, :, 0].tolist()
        differs |= bool(per_clip[0] != per_clip[1])
    assert differs == (method in PER_CLIP)     # the per-clip methods were really exercised per clip
    remove_pruning(m)
    assert int(model_macs(m)[0]) * 2 == flop_counter_macs(m, x)     # an unpatched model counts as unpruned


@pytest.mark.parametrize("family", FAMILIES)
def test_other_drop_locations_and_records(family):
    torch.manual_seed(0)
    m = create_model(family, "tiny", FRAMES, CLASSES).eval()
    x = torch.randn(2, FRAMES, 128)
    for method, drop_loc in (("topk", (0, 11)), ("evit_fuse", (5,)), ("tome", (1, 2, 3, 4))):
        apply_pruning(m, method, 0.4, drop_loc=drop_loc)
        with record(m) as rec:
            measured = flop_counter_macs(m, x)
        spec = count_macs(family, "tiny", FRAMES, 0.4, drop_loc=drop_loc, method=method, num_classes=CLASSES)
        assert 2 * spec["macs"] == measured
        assert macs_from_record(m, rec).tolist() == [spec["macs"]] * 2


def test_fused_attention_is_restored():
    m = create_model("audiomae", "tiny", 32, 3).eval()
    before = [b.attn.fused_attn for b in m.blocks]
    flop_counter_macs(m, torch.randn(1, 32, 128))
    assert [b.attn.fused_attn for b in m.blocks] == before


def by_hand(d: Dims, n_attn):
    """Unpruned MACs written out from the architecture: patch embedding, blocks, head."""
    n = n_attn
    block = n * d.dim * 3 * d.dim + 2 * n * n * d.dim + n * d.dim * d.dim + 2 * n * d.dim * 4 * d.dim
    return d.n_patches * d.dim * 256 + d.depth * block + d.dim * d.num_classes


@pytest.mark.parametrize("frames, rate, full, pruned", [(128, 0.5, 5.61, 2.81), (512, 0.5, 23.10, 11.36)])
def test_paper_figures(frames, rate, full, pruned):
    """AudioMAE ViT-B/16, 128 mel bins: 64 and 256 patch tokens, drop at blocks 3, 6, 9 (Lee & Lee, ECAI 2025)."""
    a = count_macs("audiomae", "base", frames, 1.0)
    b = count_macs("audiomae", "base", frames, rate)
    assert round(a["gmacs"], 2) == full and round(b["gmacs"], 2) == pruned
    n = frames // 16 * 8
    assert a["macs"] == by_hand(Dims.spec("audiomae", "base", frames), 1 + n)
    assert b["tokens_per_block"] == [1 + n] * 4 + [1 + n // 2] * 3 + [1 + n // 4] * 3 + [1 + n // 8] * 2
    assert len(b["gmacs_per_block"]) == 12
    assert math.isclose(sum(b["gmacs_per_block"]) + (b["parts"]["patch_embed"] + b["parts"]["head"]) / 1e9,
                        b["gmacs"], rel_tol=1e-12)
    assert sum(b["parts"].values()) == b["macs"]
    # and FlopCounterMode agrees at full scale (shapes only: meta tensors cost no arithmetic)
    with torch.device("meta"):
        m = create_model("audiomae", "base", frames, 527).eval()
        x = torch.empty(1, frames, 128)
    assert flop_counter_macs(m, x) == a["macs"]
    apply_pruning(m, "topk", rate)
    assert flop_counter_macs(m, x) == b["macs"]


def test_token_schedule_ceil_compounding():
    d = Dims(dim=8, depth=12, mlp_hidden=32, prefix=2, n_patches=10, num_classes=3)
    rows = token_schedule(d, 0.7)
    assert [r[0] for r in rows] == [12] * 4 + [9] * 3 + [7] * 3 + [6] * 2     # 10 -> 7 -> 5 -> 4 patch tokens
    assert [r[2] for r in rows] == [0, 0, 0, 3, 0, 0, 2, 0, 0, 1, 0, 0]
    for n in (7, 10, 64, 101, 256):
        for rate in (0.15, 0.3, 0.5, 0.7, 0.9):
            d = Dims(dim=8, depth=12, mlp_hidden=32, prefix=1, n_patches=n, num_classes=3)
            k, want = n, []
            for b in range(12):
                if b in (3, 6, 9):
                    k = max(1, math.ceil(Fraction(str(rate)) * k))
                want.append(1 + k)
            assert [r[1] for r in token_schedule(d, rate)] == want, (n, rate)
    # evit's fused token joins after the first drop
    d = Dims(dim=8, depth=12, mlp_hidden=32, prefix=1, n_patches=10, num_classes=3)
    assert [r[0] for r in token_schedule(d, 0.5, method="evit_fuse")] == [11] * 4 + [7] * 3 + [5] * 3 + [4] * 2


def test_macs_from_tokens_parts():
    d = Dims.spec("ast", "small", 96)
    out = macs_from_tokens(d, token_schedule(d, 0.6))
    assert sum(out["parts"].values()) == out["macs"]
    assert sum(out["per_block"]) + out["parts"]["patch_embed"] + out["parts"]["head"] == out["macs"]
    assert out["parts"]["drop"] == 0
    assert out["macs"] < by_hand(d, d.prefix + d.n_patches)


@pytest.mark.parametrize("kwargs, name", [
    (dict(family="vit"), "family"),
    (dict(size="large"), "size"),
    (dict(frames=100), "frames"),
    (dict(mel=0), "mel"),
    (dict(keep_rate=0.0), "keep_rate"),
    (dict(keep_rate=1.2), "keep_rate"),
    (dict(drop_loc=(3, 12)), "drop_loc"),
    (dict(drop_loc=(6, 6)), "drop_loc"),
    (dict(method="prune"), "method"),
    (dict(method="adaptive"), "method"),         # per-clip budgets need a forward pass
    (dict(num_classes=0), "num_classes"),
])
def test_count_macs_bad_arguments(kwargs, name):
    args = dict(family="audiomae", size="base", frames=128) | kwargs
    with pytest.raises(ConfigError, match=name):
        count_macs(**args)
