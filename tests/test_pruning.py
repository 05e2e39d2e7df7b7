"""Token pruning: identity at keep rate 1.0, where and how many tokens are dropped, what each method keeps (checked
against independent recomputations of attention, patch statistics and token layouts), records and errors."""
import copy
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block

from tprune_core.errors import ConfigError
from tprune_core.models import AudioViT, create_model
from tprune_core.pruning import (FUSED_POSITION, METHODS, apply_pruning, forward_from, hidden_before, is_pruned,
                                 kept_count, last_forward, record, remove_pruning, set_keep_rate)

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["ast", "audiomae"]
FRAMES, MEL = 64, 128            # 4 x 8 = 32 patch tokens
N = (FRAMES // 16) * (MEL // 16)
PREFIX = {"ast": 2, "audiomae": 1}


def make_model(family, frames=FRAMES, mel=MEL, seed=0):
    """A tiny model whose attention is far from uniform (timm's init makes all scores nearly equal)."""
    torch.manual_seed(seed)
    m = create_model(family, "tiny", frames, 5, mel=mel).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.qkv.weight.copy_(torch.randn(blk.attn.qkv.weight.shape, generator=g) * 0.08)
    return m


def token_index(family, t, f, frames=FRAMES, mel=MEL):
    """Token index of the patch at time block t, frequency block f (AST frequency-major, AudioMAE time-major)."""
    return f * (frames // 16) + t if family == "ast" else t * (mel // 16) + f


def planted(values):
    """Features (B, frames, mel) whose 16x16 patch (t, f) is constant ``values[b, t, f]``."""
    return values.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2).float()


def expected_count(n, rate):
    """ceil(rate * n) in exact arithmetic (0.7 * 10 is 7, not float's 7.000000000000001 -> 8)."""
    return max(1, math.ceil(Fraction(str(rate)) * n))


def attention(attn, h):
    """Output and probabilities of a timm Attention on input ``h``, written out from its weights."""
    b, n, d = h.shape
    q, k, v = F.linear(h, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    probs = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(b, n, d)
    return F.linear(out, attn.proj.weight, attn.proj.bias), probs


def capture_blocks(model):
    """Hooks that store the input and output of every block and the MLP-side input (after the drop)."""
    seen = {"in": {}, "out": {}, "mlp_in": {}}
    hooks = []
    for i, blk in enumerate(model.blocks):
        hooks.append(blk.register_forward_pre_hook(lambda mod, args, i=i: seen["in"].__setitem__(i, args[0])))
        hooks.append(blk.register_forward_hook(lambda mod, args, out, i=i: seen["out"].__setitem__(i, out)))
        hooks.append(blk.norm2.register_forward_pre_hook(
            lambda mod, args, i=i: seen["mlp_in"].__setitem__(i, args[0])))
    return seen, hooks


def kept_sets(rec, block):
    return [set(k.tolist()) for k in rec.kept[block]]


# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_keep_rate_one_is_identity(family):
    m = make_model(family)
    x = torch.randn(2, FRAMES, MEL)
    options = {"intensity_range": {"lo": -1e9, "hi": 1e9}, "adaptive": {"mass": 1.0}, "random": {"seed": 3}}
    with torch.no_grad():
        ref = m(x)
        for method in METHODS:
            apply_pruning(m, method, 1.0, **options.get(method, {}))
            out = m(x)
            assert (out - ref).abs().max().item() <= 1e-5, method
            tokens = last_forward(m).tokens
            assert tokens.shape == (2, 12, 3)
            assert (tokens[..., 0] == PREFIX[family] + N).all() and (tokens[..., 2] == 0).all(), method
            remove_pruning(m)
        assert torch.equal(m(x), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_and_classes_unchanged(family):
    m = make_model(family)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attrs_before = [set(vars(o)) for o in [m, *m.blocks]]
    x = torch.randn(2, FRAMES, MEL)
    for method in METHODS:
        apply_pruning(m, method, 0.5)
        with torch.no_grad():
            m(x)
        during = m.state_dict()
        assert list(during) == list(before), method
        assert all(torch.equal(during[k], v) for k, v in before.items()), method
        remove_pruning(m)
    after = m.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert type(m) is AudioViT
    assert all(type(b) is Block and type(b.attn) is Attention for b in m.blocks)
    assert not is_pruned(m)
    assert [set(vars(o)) for o in [m, *m.blocks]] == attrs_before   # no bookkeeping attribute left behind


def test_kept_count_ceil():
    assert kept_count(10, 0.7) == 7 and kept_count(10, 0.71) == 8
    assert [kept_count(n, 0.5) for n in (256, 128, 64)] == [128, 64, 32]
    assert kept_count(5, 0.01) == 1 and kept_count(0, 0.5) == 0
    for n in range(1, 300, 7):
        for rate in (0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0):
            assert kept_count(n, rate) == expected_count(n, rate), (n, rate)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method, rate", [("topk", 0.7), ("random", 0.3), ("mean", 0.5), ("std", 0.9),
                                          ("tome", 0.3), ("evit_fuse", 0.7)])
def test_token_counts_compound(family, method, rate):
    frames = 80 if family == "ast" else FRAMES            # AST: 8 x 5 = 40 tokens, AudioMAE 4 x 8 = 32
    n = (frames // 16) * (MEL // 16)
    m = make_model(family, frames=frames)
    apply_pruning(m, method, rate)
    with torch.no_grad():
        m(torch.randn(2, frames, MEL))
    tokens = last_forward(m).tokens
    p = PREFIX[family]
    extra = 0
    for b in range(12):
        assert (tokens[:, b, 0] == p + extra + n).all(), b            # entering attention
        if b in (3, 6, 9):
            k = expected_count(n, rate)
            assert (tokens[:, b, 2] == n - k).all()
            n = k
            extra = int(method == "evit_fuse")                           # EViT's one fused token from then on
        assert (tokens[:, b, 1] == p + extra + n).all(), b               # entering the MLP


@pytest.mark.parametrize("family", FAMILIES)
def test_drop_after_attention_before_mlp(family):
    """Recompute whole blocks: attention on all tokens, then prefix + the recorded kept tokens into the MLP."""
    m = make_model(family)
    apply_pruning(m, "topk", 0.5)
    x = torch.randn(2, FRAMES, MEL)
    seen, hooks = capture_blocks(m)
    with torch.no_grad(), record(m) as rec:
        m(x)
    for h in hooks:
        h.remove()
    p = PREFIX[family]
    with torch.no_grad():
        for b in range(12):
            blk, x_in = m.blocks[b], seen["in"][b]
            y = x_in + attention(blk.attn, blk.norm1(x_in))[0]
            if b in (3, 6, 9):
                rows = []
                for c in range(2):
                    where = {pos: j for j, pos in enumerate(rec.positions[b][c].tolist())}
                    rows.append(list(range(p)) + [p + where[pos] for pos in rec.kept[b][c].tolist()])
                y = torch.stack([y[c, r] for c, r in enumerate(rows)])
                assert y.shape[1] == seen["mlp_in"][b].shape[1]
            expect = y + blk.mlp(blk.norm2(y))
            torch.testing.assert_close(seen["out"][b], expect, atol=1e-5, rtol=1e-5)
            # provenance flows on: what was kept is what enters the next block
            if b + 1 < 12:
                nxt = rec.kept[b] if b in (3, 6, 9) else rec.positions[b]
                assert all(torch.equal(u, v) for u, v in zip(rec.positions[b + 1], nxt))


@pytest.mark.parametrize("family", FAMILIES)
def test_topk_keeps_top_recorded_scores(family):
    m = make_model(family)
    apply_pruning(m, "topk", 0.5)
    with torch.no_grad(), record(m) as rec:
        m(torch.randn(2, FRAMES, MEL))
    n = N
    for b in (3, 6, 9):
        k = expected_count(n, 0.5)
        for c in range(2):
            scores, pos, kept = rec.scores[b][c], rec.positions[b][c], rec.kept[b][c]
            assert scores.shape == pos.shape == (n,) and kept.shape == (k,)
            top = scores.topk(k).indices
            assert set(kept.tolist()) == set(pos[top].tolist()), (b, c)
            # tie-proof form of the same statement
            is_kept = torch.isin(pos, kept)
            assert scores[is_kept].min() >= scores[~is_kept].max()
        n = k


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fused", [True, False])
def test_scores_are_the_papers_attention_statistics(family, fused):
    """AST: CLS query row averaged over heads. AudioMAE: attention received, averaged over heads and patch queries
    (CLS excluded as query and as key). Checked at every block, also after drops, with timm's fused attention on
    and off (the scores come from different code paths)."""
    m = make_model(family)
    for blk in m.blocks:
        blk.attn.fused_attn = fused
    apply_pruning(m, "topk", 0.5)
    seen, hooks = capture_blocks(m)
    with torch.no_grad(), record(m) as rec:
        m(torch.randn(2, FRAMES, MEL))
    for h in hooks:
        h.remove()
    p = PREFIX[family]
    with torch.no_grad():
        for b in range(12):
            probs = attention(m.blocks[b].attn, m.blocks[b].norm1(seen["in"][b]))[1]   # (B, H, N, N)
            if family == "ast":
                expect = probs[:, :, 0, p:].mean(dim=1)
            else:
                expect = probs[:, :, 1:, 1:].mean(dim=(1, 2))
            got = torch.stack(rec.scores[b])
            torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-5)
    # the recorded tokens entering each block agree with the forward's own count
    assert torch.equal(rec.tokens, last_forward(m).tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_tokens_survive(family):
    """Even at the smallest budget the CLS (and distillation) rows stay, first, and carry on to the output."""
    m = make_model(family)
    apply_pruning(m, "random", 0.05, drop_loc=(0, 1, 2, 3))   # 32 -> 2 -> 1 -> 1 -> 1
    seen, hooks = capture_blocks(m)
    with torch.no_grad():
        m(torch.randn(2, FRAMES, MEL))
    for h in hooks:
        h.remove()
    p = PREFIX[family]
    with torch.no_grad():
        for b in range(4):
            blk, x_in = m.blocks[b], seen["in"][b]
            y = x_in + attention(blk.attn, blk.norm1(x_in))[0]
            torch.testing.assert_close(seen["mlp_in"][b][:, :p], y[:, :p], atol=1e-5, rtol=1e-5)
    assert last_forward(m).tokens[0, 4:, 0].tolist() == [p + 1] * 8


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["mean", "std"])
def test_mean_std_keep_planted_patches(family, method):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, FRAMES, MEL, generator=g) * 0.01
    k = expected_count(N, 0.5)
    want = []
    for c in range(2):
        cells = torch.randperm(N, generator=g)[:k]          # (t, f) cells of the time x frequency patch grid
        cells = [(int(i) // (MEL // 16), int(i) % (MEL // 16)) for i in cells]
        for t, f in cells:
            patch = x[c, 16 * t:16 * t + 16, 16 * f:16 * f + 16]
            if method == "mean":
                patch += 3.0                                  # bright, same spread
            else:
                patch += torch.randn(16, 16, generator=g) * 2.0   # loud texture, mean still ~0
        want.append({token_index(family, t, f) for t, f in cells})
    m = make_model(family)
    apply_pruning(m, method, 0.5, drop_loc=(3,))
    with torch.no_grad(), record(m) as rec:
        m(x)
    assert kept_sets(rec, 3) == want


@pytest.mark.parametrize("family", FAMILIES)
def test_provenance_through_three_stages(family):
    """Every patch has its own intensity: after each stage the kept positions are exactly the brightest ones,
    so the patch statistic and the positions are carried correctly from stage to stage."""
    g = torch.Generator().manual_seed(11)
    grid = torch.randperm(N, generator=g).reshape(1, FRAMES // 16, MEL // 16).float() / N   # (t, f) intensities
    grid = torch.cat([grid, grid.flip(1)])                     # second clip: another ranking
    x = planted(grid)
    m = make_model(family)
    apply_pruning(m, "mean", 0.5)
    with torch.no_grad(), record(m) as rec:
        m(x)
    n = N
    for b in (3, 6, 9):
        n = expected_count(n, 0.5)
        for c in range(2):
            ranked = sorted(((grid[c, t, f].item(), token_index(family, t, f))
                             for t in range(FRAMES // 16) for f in range(MEL // 16)), reverse=True)
            assert set(rec.kept[b][c].tolist()) == {i for _, i in ranked[:n]}, (b, c)
    assert n == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_evit_fuse_token(family):
    """The fused token is the attention-weighted mean of the pruned tokens (and, later, of the old fused token)."""
    m = make_model(family)
    apply_pruning(m, "evit_fuse", 0.5)
    seen, hooks = capture_blocks(m)
    with torch.no_grad(), record(m) as rec:
        m(torch.randn(2, FRAMES, MEL))
    for h in hooks:
        h.remove()
    p = PREFIX[family]
    with torch.no_grad():
        for b, fused_before in ((3, 0), (6, 1), (9, 1)):
            blk, x_in = m.blocks[b], seen["in"][b]
            out, probs = attention(blk.attn, blk.norm1(x_in))
            y = x_in + out
            q0 = p + fused_before   # first patch query (AudioMAE: CLS and fused token are not patch queries)
            score = probs[:, :, 0, p:].mean(1) if family == "ast" else probs[:, :, q0:, p:].mean(dim=(1, 2))
            torch.testing.assert_close(torch.stack(rec.scores[b]), score, atol=1e-6, rtol=1e-5)
            for c in range(2):
                pos = rec.positions[b][c]
                assert (pos[0].item() == FUSED_POSITION) == bool(fused_before)
                pruned = ~torch.isin(pos, rec.kept[b][c])
                if fused_before:
                    pruned[0] = True                       # the old fused token joins the new one
                w = score[c, pruned]
                expect = (w[:, None] * y[c, p:][pruned]).sum(0) / w.sum()
                got = seen["mlp_in"][b][c]
                torch.testing.assert_close(got[p], expect, atol=1e-5, rtol=1e-5)
                assert rec.kept[b][c][0].item() == FUSED_POSITION   # sits right after the prefix tokens
                kept_rows = [p + j for j, q in enumerate(pos.tolist()) if q in set(rec.kept[b][c][1:].tolist())]
                torch.testing.assert_close(got[p + 1:], y[c, kept_rows], atol=1e-5, rtol=1e-5)


PAIRS = [[1.0, 0.00, 0.0, 0.00], [1.0, 0.01, 0.0, 0.00], [0.9, 0.30, 0.0, 0.00], [0.9, 0.31, 0.0, 0.00],
         [0.0, 0.00, 1.0, 0.00], [0.0, 0.00, 1.0, 0.01], [0.0, 0.00, 0.9, 0.30], [0.0, 0.00, 0.9, 0.31]]
UNEVEN = [[1.0, 0.00, 0.0, 0.00], [1.0, 0.02, 0.0, 0.00], [1.0, 0.04, 0.0, 0.00], [0.8, 0.60, 0.0, 0.00],
          [0.0, 0.00, 1.0, 0.00], [0.0, 0.00, 1.0, 0.01]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("vecs, rate, groups", [
    # one round: each source token (even index) merges into its near-twin destination (odd index)
    (PAIRS, 0.5, [[0, 1], [2, 3], [4, 5], [6, 7]]),
    # keep 2 of 8: a second round merges the similar couples of pairs
    (PAIRS, 0.25, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    # keep 2 of 6: round 1 makes tokens of size 3, 1 and 2; round 2 merges size 3 into size 1, which only gives
    # the mean of the four original tokens if the merge is weighted by size
    (UNEVEN, 0.33, [[0, 1, 2, 3], [4, 5]]),
])
def test_tome_merges_most_similar(family, vecs, rate, groups):
    """Crafted tokens (through the public forward): merged tokens are the size-weighted means of their groups."""
    vecs = torch.tensor(vecs)
    n = len(vecs)
    frames, mel = (16 * n, 16) if family == "ast" else (16, 16 * n)    # one row of n patches either way
    m = create_model(family, "tiny", frames, 5, mel=mel).eval()
    quads = [(0, 0), (0, 8), (8, 0), (8, 8)]
    with torch.no_grad():
        # token = the four 8x8 quadrant means of its patch; no position embedding; block 0's attention adds 0
        w = torch.zeros_like(m.patch_embed.proj.weight)
        for j, (r, c) in enumerate(quads):
            w[j, 0, r:r + 8, c:c + 8] = 1 / 64
        m.patch_embed.proj.weight.copy_(w)
        m.patch_embed.proj.bias.zero_()
        m.pos_embed.zero_()
        m.blocks[0].attn.proj.weight.zero_()
        m.blocks[0].attn.proj.bias.zero_()
    img = torch.zeros(1, 16, 16 * n)                             # the image (rows, cols) of one patch row
    for i, v in enumerate(vecs):
        for j, (r, c) in enumerate(quads):
            img[0, r:r + 8, 16 * i + c:16 * i + c + 8] = v[j]
    x = img.transpose(1, 2) if family == "ast" else img         # back to (B, frames, mel)
    apply_pruning(m, "tome", rate, drop_loc=(0,))
    seen, hooks = capture_blocks(m)
    with torch.no_grad(), record(m) as rec:
        m(x)
    for h in hooks:
        h.remove()
    p = PREFIX[family]
    merged = seen["mlp_in"][0][0, p:, :4]
    expect = torch.stack([vecs[g].mean(0) for g in groups])
    torch.testing.assert_close(merged, expect, atol=1e-6, rtol=1e-5)
    assert rec.kept[0][0].tolist() == [g[-1] for g in groups]    # a merged token keeps its destination's position
    assert last_forward(m).tokens[0, 0].tolist() == [p + n, p + len(groups), n - len(groups)]


@pytest.mark.parametrize("family", FAMILIES)
def test_tome_counts_multiple_rounds(family):
    m = make_model(family)
    for rate in (0.5, 0.3, 0.2):   # 0.3 and 0.2 need two matching rounds in a stage
        apply_pruning(m, "tome", rate)
        with torch.no_grad(), record(m) as rec:
            m(torch.randn(2, FRAMES, MEL))
        n = N
        for b in (3, 6, 9):
            k = expected_count(n, rate)
            for c in range(2):
                kept = rec.kept[b][c]
                assert len(kept) == k and len(set(kept.tolist())) == k
                assert set(kept.tolist()) <= set(rec.positions[b][c].tolist())
            assert (last_forward(m).tokens[:, b, 2] == n - k).all()
            n = k


@pytest.mark.parametrize("family", FAMILIES)
def test_random_is_seeded(family):
    m = make_model(family)
    x = torch.randn(2, FRAMES, MEL)

    def kept(seed):
        apply_pruning(m, "random", 0.5, seed=seed)
        with torch.no_grad(), record(m) as rec:
            m(x)
        return [kept_sets(rec, b) for b in (3, 6, 9)]

    rng = torch.get_rng_state()
    first = kept(1)
    assert torch.equal(torch.get_rng_state(), rng)      # no global RNG state used
    assert kept(1) == first
    assert kept(2) != first
    assert [len(s) for s in first[0]] == [16, 16]


@pytest.mark.parametrize("family", FAMILIES)
def test_intensity_range(family):
    """Keeps exactly the patches whose mean lies in [lo, hi), clip by clip; a clip with no patch in range is not
    skipped: its prediction comes from the prefix tokens alone and it is counted in ``last_forward(m).n_empty``."""
    g = torch.Generator().manual_seed(5)
    levels = torch.tensor([-1.0, 0.5, 1.0, 2.0, 3.0])            # 0.5 (= lo) is in, 2.0 (= hi) is out
    grid = levels[torch.randint(0, 5, (3, FRAMES // 16, MEL // 16), generator=g)]
    grid[2] = 3.0                                                # clip 2: nothing in range
    x = planted(grid)
    m = make_model(family)
    apply_pruning(m, "intensity_range", 1.0, drop_loc=(3,), lo=0.5, hi=2.0)
    feats = []
    hook = m.norm.register_forward_hook(lambda mod, args, out: feats.append(out))
    with torch.no_grad(), record(m) as rec:
        out = m(x)
    hook.remove()
    want = [{token_index(family, t, f) for t in range(FRAMES // 16) for f in range(MEL // 16)
             if 0.5 <= grid[c, t, f] < 2.0} for c in range(3)]
    assert kept_sets(rec, 3) == want and len(want[0]) > 0 and want[2] == set()
    p = PREFIX[family]
    tokens = last_forward(m).tokens
    assert [int(tokens[c, 4, 0]) for c in range(3)] == [p + len(s) for s in want]
    assert last_forward(m).n_empty == 1
    # the empty clip's prediction comes from its prefix tokens (AudioMAE: the CLS token)
    f2 = feats[2]
    assert f2.shape == (1, p, 192)
    pooled = (f2[:, 0] + f2[:, 1]) / 2 if family == "ast" else f2[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(out[2:], m.head(m.fc_norm(pooled)), atol=1e-5, rtol=1e-5)
        # a batch gives what each clip gives alone
        alone = torch.cat([m(x[c:c + 1]) for c in range(3)])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()
    # several ranges: the union
    apply_pruning(m, "intensity_range", 1.0, drop_loc=(3,), keep_ranges=[(-2.0, 0.0), (2.5, 4.0)])
    with torch.no_grad(), record(m) as rec:
        m(x)
    assert kept_sets(rec, 3) == [{token_index(family, t, f) for t in range(FRAMES // 16) for f in range(MEL // 16)
                                  if float(grid[c, t, f]) in (-1.0, 3.0)} for c in range(3)]
    assert last_forward(m).n_empty == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mass, rate", [(0.5, 1.0), (0.95, 0.3)])
def test_adaptive_keeps_fewest_reaching_mass(family, mass, rate):
    m = make_model(family)
    apply_pruning(m, "adaptive", rate, mass=mass)
    with torch.no_grad(), record(m) as rec:
        m(torch.randn(2, FRAMES, MEL))
    capped = pruned = 0
    for b in (3, 6, 9):
        for c in range(2):
            scores, pos = rec.scores[b][c].double(), rec.positions[b][c]
            n = len(pos)
            ranked = scores.sort(descending=True).values
            fewest = next(j for j in range(1, n + 1) if ranked[:j].sum() >= mass * scores.sum() - 1e-12)
            k = min(fewest, expected_count(n, rate))
            capped += fewest > k
            pruned += k < n
            assert set(rec.kept[b][c].tolist()) == set(pos[scores.topk(k).indices].tolist()), (b, c)
            assert int(last_forward(m).tokens[c, b, 2]) == n - k
    assert pruned > 0 and (capped > 0 if rate < 1.0 else capped == 0)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method, options, rate", [
    ("adaptive", {"mass": 0.7}, 1.0), ("adaptive", {"mass": 0.95}, 1.0),
    ("intensity_range", {"lo": -0.3, "hi": 0.4}, 1.0), ("intensity_range", {"lo": 0.6, "hi": 9.0}, 1.0)])
def test_per_clip_batch_equals_clip_by_clip(family, method, options, rate, fused):
    """A batch of a per-clip method (padded, masked) gives each clip's logits, token counts and empty count exactly
    as running that clip alone, with fused and with explicit attention."""
    m = make_model(family)
    for blk in m.blocks:
        blk.attn.fused_attn = fused
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, FRAMES, MEL, generator=g)
    x[1] += torch.linspace(-1, 1, MEL)
    x[4] = -2.0                                  # intensity_range: nothing in range, the clip is left empty
    apply_pruning(m, method, rate, **options)
    with torch.no_grad():
        batch = m(x)
        tokens, empty = last_forward(m).tokens, last_forward(m).n_empty
        alone = [(m(x[i:i + 1]), last_forward(m).tokens, last_forward(m).n_empty) for i in range(len(x))]
    torch.testing.assert_close(batch, torch.cat([a[0] for a in alone]), atol=1e-5, rtol=1e-5)
    assert torch.equal(tokens, torch.cat([a[1] for a in alone]))
    assert empty == sum(a[2] for a in alone)
    assert len({tuple(r) for r in tokens[:, :, 0].tolist()}) > 1    # clips really kept different counts
    if method == "intensity_range":
        assert empty >= 1 and torch.isfinite(batch).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_forward_from_shared_prefix_is_the_same_forward(family, method):
    """Resuming at the first drop block from precomputed hidden states gives the logits, token counts and empty
    count of a plain forward (evaluation grids rely on it to compute the unpruned prefix once)."""
    m = make_model(family)
    x = torch.randn(3, FRAMES, MEL, generator=torch.Generator().manual_seed(4))
    options = {"intensity_range": {"lo": -0.2, "hi": 0.6}, "adaptive": {"mass": 0.8}}.get(method, {})
    for drop_loc, start in [((3, 6, 9), 3), ((5, 8), 5), ((5, 8), 2)]:
        apply_pruning(m, method, 0.5, drop_loc, **options)
        with torch.no_grad():
            plain = m(x)
            want = last_forward(m)
            apply_pruning(m, method, 0.5, drop_loc, **options)     # same random stream for `random`
            resumed = forward_from(m, x, hidden_before(m, x, start), start)
        torch.testing.assert_close(resumed, plain, atol=1e-6, rtol=1e-6)
        assert torch.equal(last_forward(m).tokens, want.tokens) and last_forward(m).n_empty == want.n_empty
        assert torch.equal(last_forward(m).positions, want.positions)
    with pytest.raises(ConfigError, match="start"):
        forward_from(m, x, hidden_before(m, x, 6), 6)              # past the first drop location (5)


@pytest.mark.parametrize("family", FAMILIES)
def test_set_keep_rate(family):
    m = make_model(family)
    x = torch.randn(2, FRAMES, MEL)
    with torch.no_grad():
        ref = m(x)
        apply_pruning(m, "topk", 0.5)
        m(x)
        assert last_forward(m).tokens[0, 4, 0].item() == PREFIX[family] + 16
        set_keep_rate(m, 0.25)
        m(x)
        assert last_forward(m).tokens[0, 4, 0].item() == PREFIX[family] + 8
        set_keep_rate(m, 1.0)
        assert (m(x) - ref).abs().max().item() <= 1e-5
    with pytest.raises(ConfigError, match="keep_rate"):
        set_keep_rate(m, 0.0)
    remove_pruning(m)
    with pytest.raises(ConfigError, match="apply_pruning"):
        set_keep_rate(m, 0.5)


def test_record_on_unpatched_model():
    m = make_model("audiomae")
    x = torch.randn(2, FRAMES, MEL)
    with torch.no_grad():
        ref = m(x)
        with record(m) as rec:
            out = m(x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert type(m) is AudioViT and not is_pruned(m)
    assert sorted(rec.scores) == list(range(12)) and rec.kept == {}
    assert rec.tokens.shape == (2, 12, 3) and (rec.tokens[..., 0] == 1 + N).all()


@pytest.mark.parametrize("args, options, name", [
    (("prune", 0.5), {}, "method"),
    (("topk", 0.0), {}, "keep_rate"),
    (("topk", 1.5), {}, "keep_rate"),
    (("topk", -0.2), {}, "keep_rate"),
    (("topk", 0.5, (3, 12)), {}, "drop_loc"),
    (("topk", 0.5, (3, 3)), {}, "drop_loc"),
    (("topk", 0.5, ()), {}, "drop_loc"),
    (("random", 0.5), {"sed": 1}, "sed"),
    (("topk", 0.5), {"seed": 1}, "seed"),
    (("adaptive", 0.5), {"mass": 0.0}, "mass"),
    (("adaptive", 0.5), {"mass": 1.5}, "mass"),
])
def test_bad_arguments(args, options, name):
    m = create_model("ast", "tiny", 32, 3)
    with pytest.raises(ConfigError, match=name):
        apply_pruning(m, *args, **options)
    assert type(m) is AudioViT      # a refused call leaves the model alone


def test_only_random_pruning_draws_random_numbers(monkeypatch):
    """The random draw runs only for ``random``: other methods never pay for it."""
    from tprune_core import pruning as P

    def refuse(*args, **kwargs):
        raise AssertionError("_random called for a method that does not rank at random")

    model = create_model("audiomae", "tiny", 32, 4).eval()
    x = torch.randn(2, 32, 128)
    monkeypatch.setattr(P, "_random", refuse)
    for method in ("topk", "mean", "std", "evit_fuse"):
        with torch.inference_mode():
            P.apply_pruning(copy.deepcopy(model), method, 0.5)(x)
    with pytest.raises(AssertionError, match="_random called"), torch.inference_mode():
        P.apply_pruning(copy.deepcopy(model), "random", 0.5)(x)


def test_public_state_api_reports_settings_counts_positions_and_calls():
    """``settings``, ``last_forward``, ``call_count`` and ``set_call_count`` are all a caller needs of a patched
    model: the token table is one tensor, positions are the surviving original patch indices (padding marked)."""
    from tprune_core.pruning import PADDING_POSITION, call_count, set_call_count, settings
    m = make_model("audiomae")
    x = torch.randn(3, FRAMES, MEL, generator=torch.Generator().manual_seed(0))
    assert settings(m) is None and not is_pruned(m)
    with pytest.raises(ConfigError, match="not patched"):
        last_forward(m)
    apply_pruning(m, "topk", 0.5, (3, 6, 9))
    with pytest.raises(ConfigError, match="not run a forward"):
        last_forward(m)
    assert settings(m).method == "topk" and settings(m).keep_rate == 0.5 and settings(m).drop_loc == (3, 6, 9)
    with torch.no_grad(), record(m) as rec:
        m(x)
    last = last_forward(m)
    n = m.patch_embed.num_patches
    assert last.tokens.dtype == torch.long and last.tokens.shape == (3, len(m.blocks), 3)
    assert last.positions.shape == (3, kept_count(kept_count(kept_count(n, 0.5), 0.5), 0.5))
    assert torch.equal(last.positions, torch.stack(list(rec.kept[9])))    # the same provenance as a record
    assert last.calls == call_count(m) == 1
    set_call_count(m, 7)
    with torch.no_grad():
        m(x)
    assert call_count(m) == 8 and last_forward(m).calls == 8
    with pytest.raises(ConfigError, match="calls"):
        set_call_count(m, -1)
    # a per-clip method pads: positions beyond a clip's own count are PADDING_POSITION, kept() drops them
    apply_pruning(m, "adaptive", 1.0, (3, 6, 9), mass=0.5)
    with torch.no_grad():
        m(x)
    last = last_forward(m)
    for c in range(3):
        kept = last.kept(c)
        assert (kept != PADDING_POSITION).all()
        assert len(kept) == int(last.tokens[c, -1, 1]) - m.num_prefix_tokens


class HostTraffic:
    """A dispatch spy over a forward: tensor values read into Python (``.item()``, ``int(t)``, ``bool(t)``),
    constants built from Python data (``torch.tensor([...])``, a scalar made a tensor) and copies from the CPU to
    another device. Each stalls a GPU pipeline or uploads the same constant on every call."""

    CONSTANTS = ("aten::lift_fresh", "aten::lift_fresh_copy", "aten::scalar_tensor")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        spy = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                spy.see(func, args, kwargs or {})
                return func(*args, **(kwargs or {}))

        self.mode, self.events = Mode(), []

    def see(self, func, args, kwargs):
        name = func._schema.name
        if func is torch.ops.aten._local_scalar_dense.default:
            self.events.append(("read", name))
        elif name in self.CONSTANTS:
            self.events.append(("constant", name))
        elif func is torch.ops.aten._to_copy.default and "device" in kwargs:
            if args[0].device.type == "cpu" and torch.device(kwargs["device"]).type != "cpu":
                self.events.append(("upload", name))
        elif name == "aten::copy_" and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            self.events.append(("upload", name))

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def test_host_traffic_spy_sees_what_it_looks_for():
    with HostTraffic() as spy:
        t = torch.tensor([1.0, 2.0])
        t.sum().item()
    assert ("constant", "aten::lift_fresh") in spy.events and ("read", "aten::_local_scalar_dense") in spy.events


@pytest.mark.parametrize("family", FAMILIES)
def test_static_budget_forward_reads_nothing_into_python_and_builds_no_constant(family):
    """A pruned forward with a static token budget (all six of ``FIXED_BUDGET``, random included) never syncs on a
    tensor value and never builds a tensor from Python data (on a GPU that is a host-to-device copy on every
    call). Per-clip methods (adaptive, intensity_range) must read their counts, so they are left out; a
    regression in any other method fails here. Host-to-device copies themselves only show with a GPU: see the
    CUDA test below."""
    from tprune_core.rules import FIXED_BUDGET

    m = make_model(family)
    x = torch.randn(2, FRAMES, MEL, generator=torch.Generator().manual_seed(1))
    assert len(FIXED_BUDGET) == 6 and "random" in FIXED_BUDGET
    for method in FIXED_BUDGET:
        apply_pruning(m, method, 0.5)
        with torch.no_grad(), HostTraffic() as spy:
            m(x)
        assert spy.events == [], method
        assert last_forward(m).tokens.shape == (2, len(m.blocks), 3)   # the summary is still there, built later
    apply_pruning(m, "adaptive", 0.5)          # the spy does see reads where they happen
    with torch.no_grad(), HostTraffic() as spy:
        m(x)
    assert ("read", "aten::_local_scalar_dense") in spy.events


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none; run on a GPU machine)")
def test_static_budget_cuda_forward_never_syncs_or_uploads():
    """On CUDA, under ``torch.cuda.set_sync_debug_mode("error")`` (any implicit sync raises), a static-budget
    forward runs through with no host-to-device copy, and random pruning keeps the same tokens as on the CPU.
    The only test of the suite that skips: CI has no GPU; ``bench/gpu_session.sh`` runs it on a lent one."""
    from tprune_core.rules import FIXED_BUDGET

    x = torch.randn(2, FRAMES, MEL, generator=torch.Generator().manual_seed(1))
    for family in FAMILIES:
        for method in FIXED_BUDGET:
            cpu = apply_pruning(make_model(family), method, 0.5)
            gpu = apply_pruning(make_model(family).cuda(), method, 0.5)
            xc = x.cuda()
            with torch.no_grad():
                gpu(xc)                      # first call: CUDA libraries initialise (and may sync) here
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    with HostTraffic() as spy:
                        gpu(xc)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
                assert spy.events == [], (family, method)
                cpu(x)
                cpu(x)
            if method == "random":           # the same draw on either device (second call: counter 1 on both)
                assert torch.equal(last_forward(gpu).positions.cpu(), last_forward(cpu).positions)


def test_intensity_range_matched_random_control_keeps_the_same_count_elsewhere():
    """The control of a bucket drop: every clip keeps as many tokens as the bucket drop leaves it, at random."""
    from tprune_core import pruning
    torch.manual_seed(0)
    model = create_model("ast", "tiny", frames=64, num_classes=5).eval()
    x = torch.randn(4, 64, 128)
    x[0] = x[0].abs() + 5.0   # a clip whose every patch is in range: nothing to drop
    ranges = [(0.0, float("inf"))]

    def run(**options):
        pruning.apply_pruning(model, "intensity_range", 1.0, (0,), keep_ranges=ranges, **options)
        with torch.no_grad():
            out = model(x)
        last = pruning.last_forward(model)
        pruning.remove_pruning(model)
        return out, last

    _, bucket = run()
    _, control = run(matched="random", seed=1)
    _, again = run(matched="random", seed=1)
    assert torch.equal(bucket.tokens, control.tokens)               # same budget per clip and block
    kept = [set(p[p >= 0].tolist()) for p in bucket.positions]
    drawn = [set(p[p >= 0].tolist()) for p in control.positions]
    assert [len(k) for k in kept] == [len(d) for d in drawn]
    assert any(k != d for k, d in zip(kept[1:], drawn[1:]))         # drawn elsewhere, not the bucket's tokens
    assert kept[0] == drawn[0] == set(range(len(kept[0])))          # a full clip stays full
    assert [set(p[p >= 0].tolist()) for p in again.positions] == drawn   # seeded
    with pytest.raises(Exception, match="matched must be one of"):
        pruning.apply_pruning(model, "intensity_range", 1.0, (0,), keep_ranges=ranges, matched="loud")


def test_patched_sets_a_setting_for_the_block_and_restores_the_previous_one():
    """`patched`: the setting inside, the previous patch (or none) afterwards, also when the block raises; a
    patched model's forward counter (random pruning's draws) continues where it was."""
    from tprune_core.pruning import PruneSettings, call_count, patched, settings
    model = make_model("ast")
    x = torch.randn(2, FRAMES, MEL)
    with patched(model, PruneSettings("topk", 0.5, (3, 6, 9))):
        assert settings(model).method == "topk"
        model(x)
    assert not is_pruned(model)
    apply_pruning(model, "random", 0.7, (2, 5))
    model(x), model(x)
    with pytest.raises(RuntimeError, match="inside"):
        with patched(model, PruneSettings("mean", 0.3, (4,))):
            assert settings(model).keep_rate == 0.3
            raise RuntimeError("inside")
    assert settings(model) == PruneSettings("random", 0.7, (2, 5))
    assert call_count(model) == 2
    with patched(model, None):
        assert not is_pruned(model)
    assert settings(model).method == "random"
