"""Token pruning added to a stock timm ViT in place, by re-classing the model, its blocks and their attention.

``apply_pruning(model, "topk", 0.5)`` makes every block in ``drop_loc`` keep only ``ceil(keep_rate * n)`` of its
``n`` patch tokens, chosen after the attention residual and before the MLP; prefix tokens (CLS, AST's distillation
token) always survive, so counts compound (256 -> 128 -> 64 -> 32). No parameter is added and the ``state_dict``
is the same before, during and after; the one addition is a non-persistent buffer counting forwards (on the model's
device, so that random pruning can key its draws with it in-graph). ``remove_pruning`` restores the original
classes and drops the counter.

Compiling: with a static token budget (``rules.FIXED_BUDGET``: topk, random, mean, std, evit_fuse, tome) a pruned
model compiles as one graph (``torch.compile(model, fullgraph=True)``) that matches eager, random draws included,
and is not recompiled from call to call. The forward reads no tensor value into Python and copies nothing from the
host: index tensors are made on the input's device, the forward counter is a device tensor incremented in place,
and ``last_forward`` is assembled from the forward's tensors only when asked for. (Under CUDA graphs,
``mode="reduce-overhead"``, read ``last_forward`` before the next compiled call: that call reuses the memory.)
``adaptive`` and ``intensity_range`` keep a number of tokens that depends on the clip, which a graph with static
shapes cannot express: under a compile they raise an error that names the method (with ``fullgraph=False`` dynamo
breaks the graph there and runs that frame eagerly).

Attention scores (what ``topk``, ``evit_fuse`` and ``adaptive`` rank by, and what ``record`` stores):
- AST (``family == "ast"``): the CLS query row, averaged over heads;
- AudioMAE: the attention each token receives, averaged over heads and over patch queries.
Scores are computed only in blocks that need them. Elsewhere, and in scoring blocks of AST, the attention output
itself comes from timm's own path (fused ``scaled_dot_product_attention`` unless ``attn.fused_attn`` is off); AST
adds only the CLS row, AudioMAE needs the whole attention matrix for its column means and computes it explicitly,
in cache-sized chunks (``_attend_received``). With ``attn.fused_attn = False`` every scoring block takes the plain
explicit path, the reference the fast path is tested against.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from timm.models.vision_transformer import Block

from .. import rules
from ..errors import ConfigError
from ..rules import DEFAULT_DROP_LOC, check_pruning, fixed_budget_methods, load_function, pruning_method
from .models import patch_pixels

__all__ = ["METHODS", "FUSED_POSITION", "PADDING_POSITION", "PruneSettings", "LastForward", "PruneRecord",
           "apply_pruning", "remove_pruning", "patched", "set_keep_rate", "is_pruned", "settings", "last_forward",
           "call_count", "set_call_count", "record", "hidden_before", "forward_from", "kept_count", "tome_rounds",
           "keep_highest", "first_drop_counts"]

FUSED_POSITION = -1                             # provenance of evit_fuse's extra token
PADDING_POSITION = -2                           # LastForward.positions: no token here (per-clip methods pad)


def __getattr__(name: str):
    """``METHODS``, ``PER_CLIP``, ...: re-exported from ``rules`` as views of its method records."""
    if name in ("METHODS", "SCORED", "PER_CLIP", "FIXED_BUDGET", "PATCH_STAT", "OPTIONS"):
        return getattr(rules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kept_count(n: int, keep_rate: float) -> int:
    """Patch tokens that survive one drop stage."""
    # The epsilon keeps float noise from rounding up, e.g. 0.7 * 10 = 7.000000000000001 -> 7, not 8.
    return min(n, max(1, math.ceil(keep_rate * n - 1e-9)))


def tome_rounds(n: int, remove: int) -> list[tuple[int, int]]:
    """Bipartite matching rounds ToMe needs to remove ``remove`` of ``n`` tokens: (n_src, n_dst) per round.

    One round pairs every other token (src) with its most similar token of the rest (dst) and can merge at most
    all src tokens, so keep rates below 0.5 take more than one round.
    """
    rounds = []
    while remove > 0:
        n_src, n_dst = (n + 1) // 2, n // 2
        r = min(remove, n_src)
        rounds.append((n_src, n_dst))
        n, remove = n - r, remove - r
    return rounds


# ---------------------------------------------------------------------------------------------------------------
# The public view of a patched model: its settings and what its last forward did.

@dataclass(frozen=True)
class PruneSettings:
    """How a model is patched: ``apply_pruning``'s arguments, checked."""
    method: str
    keep_rate: float
    drop_loc: tuple
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LastForward:
    """What the last forward of a patched model did.

    ``tokens``: (clips, depth, 3) long tensor: tokens entering attention, tokens entering the MLP, and patch tokens
    removed (merged, for tome) at each block, prefix tokens included in the first two. ``positions``: (clips, k)
    original patch index of every patch token that reached the head (``FUSED_POSITION`` for evit's fused token,
    ``PADDING_POSITION`` where a per-clip method kept fewer than ``k``), on the model's device. ``n_empty``: clips
    left with no patch token (``intensity_range``); their prediction comes from the prefix tokens. ``calls``:
    forwards since the model was patched (or since ``set_call_count``), this one included.
    """
    tokens: torch.Tensor
    positions: torch.Tensor
    n_empty: int
    calls: int

    def kept(self, clip: int) -> torch.Tensor:
        """Original patch indices of the tokens clip ``clip`` kept to the end (padding left out)."""
        row = self.positions[clip]
        return row[row != PADDING_POSITION]


@dataclass
class PruneRecord:
    """What one or more forward passes did, per block and per clip (lists over clips, in call order).

    ``scores[b][c]``: attention score of every non-prefix token entering block ``b`` (in current order; computed at
    every block while recording). ``positions[b][c]``: the original patch index of those tokens (-1: evit's fused
    token; tome: the position of the surviving destination token). ``kept[b][c]``: positions after the drop at
    block ``b`` (only for drop blocks). ``tokens``: (clips, depth, 3) tokens entering attention, tokens entering
    the MLP, and patch tokens removed at that block (merged, for tome).
    """
    scores: dict = field(default_factory=dict)
    positions: dict = field(default_factory=dict)
    kept: dict = field(default_factory=dict)
    token_rows: list = field(default_factory=list)

    def _add(self, table: dict, block: int, rows: torch.Tensor):
        table.setdefault(block, []).extend(r for r in rows.detach().cpu())

    @property
    def tokens(self) -> torch.Tensor:
        return torch.cat(self.token_rows) if self.token_rows else torch.empty(0, 0, 3, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# The state shared by a patched model and its blocks.

class PruneState:
    """Settings, the bookkeeping of the forward in flight, and the summary of the last finished one."""

    def __init__(self, model, settings: PruneSettings):
        self.family = model.family
        self.prefix = model.num_prefix_tokens
        self.settings = settings
        self.spec = pruning_method(settings.method)    # the method's record: flags, options
        self.drop = load_function(self.spec.select)    # its select function (see ``select``), imported once here
        self.record: PruneRecord | None = None
        self.calls_now = None   # during a forward: the model's call counter (a tensor on its device), for random
        self._done = None       # what the last forward left (tensors, not yet read into Python)
        self._last: LastForward | None = None

    @property
    def last(self) -> LastForward | None:
        """The summary of the last finished forward, built when first asked for: building it reads tensors into
        Python (and onto the CPU), which a forward itself never does."""
        if self._last is None and self._done is not None:
            self._last, self._done = _summary(*self._done), None
        return self._last

    @last.setter
    def last(self, value: LastForward | None):
        self._last, self._done = value, None

    # Settings, read by the blocks on every forward.
    method = property(lambda self: self.settings.method)
    keep_rate = property(lambda self: self.settings.keep_rate)
    drop_loc = property(lambda self: self.settings.drop_loc)
    options = property(lambda self: self.settings.options)

    def begin(self, model, x):
        """Reset the per-forward bookkeeping; ``x`` is the image the patch embedding sees."""
        b, n = x.shape[0], model.patch_embed.num_patches
        self.calls_now = model._tprune_calls
        self.positions = torch.arange(n, device=x.device).expand(b, n)
        self.stat = None   # (B, n) the method's patch statistic (``patch_stat``), following the kept tokens
        if self.spec.patch_stat is not None:
            self.stat = _patch_stat(model, x, self.spec.patch_stat)
        self.sizes = None  # tome: (B, n) patches merged into each token, from its first drop on
        self.fused = 0   # 1 once evit_fuse has made its extra token (it sits right after the prefix tokens)
        self.valid = None  # per-clip methods in a batch: (B, n) which patch tokens are real, not padding
        self.counts = []   # per block: a (attn, mlp, removed) tuple for the whole batch, or a (B, 3) tensor

    def special(self) -> int:
        return self.prefix + self.fused

    def may_drop(self, n_tokens: int) -> bool:
        """False when a drop stage would keep every token anyway (keep rate 1.0): then it costs nothing."""
        n = n_tokens - self.special()
        return self.spec.per_clip or kept_count(n, self.keep_rate) < n

    def keep(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Special tokens plus patch tokens ``idx`` (B, k) of ``x``, in one indexed copy; provenance follows."""
        s = self.special()
        out = _gather(x, torch.cat([torch.arange(s, device=x.device).expand(x.shape[0], s), idx + s], dim=1))
        self.positions = torch.gather(self.positions, 1, idx)
        if self.stat is not None:
            self.stat = torch.gather(self.stat, 1, idx)
        return out

    def token_counts(self) -> torch.Tensor | None:
        """(B,) tokens of each clip in a padded batch (prefix included), None when the batch is not padded."""
        return None if self.valid is None else self.valid.sum(1) + self.special()

    def attn_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """Boolean attention mask (B, 1, 1, N), True where a key takes part (SDPA's convention), or None."""
        if self.valid is None:
            return None
        prefix = torch.ones(x.shape[0], self.special(), dtype=torch.bool, device=x.device)
        return torch.cat([prefix, self.valid], dim=1)[:, None, None]

    def log_tokens(self, n_in, n_attn: int, n_out: int, n_removed: int, b: int, device):
        """One block's (attn, mlp, removed) counts; per clip when the batch is padded (``n_in`` a tensor)."""
        now = self.token_counts()
        if n_in is None and now is None:
            self.counts.append((n_attn, n_out, n_removed))
            return
        n_in = torch.full((b,), n_attn, device=device) if n_in is None else n_in
        now = torch.full((b,), n_out, device=device) if now is None else now
        self.counts.append(torch.stack([n_in, now, n_in - now], 1))

    def finish(self, b: int, calls: torch.Tensor):
        """Keep what this forward did for ``last`` (no tensor is read here); ``calls``: the counter after it."""
        self._done = (b, self.counts, self.positions, self.valid, self.fused, calls)
        self._last = None
        self.valid = None


def _token_table(counts: list, b: int) -> torch.Tensor:
    """One forward's per-block counts as one (B, depth, 3) long tensor on the CPU."""
    if all(isinstance(c, tuple) for c in counts):
        return torch.tensor(counts, dtype=torch.long).expand(b, -1, -1).clone()
    return torch.stack([c.cpu() if torch.is_tensor(c) else torch.tensor(c).expand(b, 3) for c in counts], 1).long()


def _summary(b, counts, positions, valid, fused, calls) -> LastForward:
    """``LastForward`` from what ``PruneState.finish`` kept: token table, surviving positions, empty clips."""
    provenance = _with_fused(positions, fused)
    if valid is not None:
        valid_all = torch.cat([torch.ones_like(provenance[:, :fused], dtype=torch.bool), valid], dim=1)
        provenance = provenance.masked_fill(~valid_all, PADDING_POSITION)
    if positions.shape[1] == 0:
        n_empty = int(b)
    else:
        n_empty = 0 if valid is None else int((valid.sum(1) == 0).sum())
    return LastForward(tokens=_token_table(counts, b), positions=provenance, n_empty=n_empty, calls=int(calls))


# ---------------------------------------------------------------------------------------------------------------
# The drop: which patch tokens survive a block. Each method's record (rules.register_method) names its select
# function; each reads and updates a PruneState: ``keep_rate``, ``options``, ``special()`` (prefix tokens, plus
# evit's fused token), ``stat`` (its patch statistic), ``keep(x, idx)`` (the indexed copy that carries provenance).

def select(st: PruneState, block: int, x: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
    """Drop patch tokens of ``x`` (B, N, D) after block ``block``'s attention, by the method's select function.
    ``scores``: (B, N - prefix) attention scores (a scored method, or recording), fused token first; else None."""
    return st.drop(st, block, x, scores)


def keep_highest(st: PruneState, x: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """A fixed budget: the ``kept_count`` patch tokens of highest ``rank`` (B, n), kept in patch order."""
    n = x.shape[1] - st.special()
    k = kept_count(n, st.keep_rate)
    return x if k == n else st.keep(x, _highest(rank, k))


def _highest(rank: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices of the ``k`` highest entries of each row of ``rank``, in ascending (patch) order."""
    return rank.topk(k, dim=1, sorted=False).indices.sort(dim=1).values


def select_topk(st: PruneState, block: int, x, scores):
    return keep_highest(st, x, scores[:, st.fused:])


def select_random(st: PruneState, block: int, x, scores):
    n = x.shape[1] - st.special()
    if kept_count(n, st.keep_rate) == n:   # drawn only when asked for
        return x
    return keep_highest(st, x, _random(st, x.shape[0], n, block, x.device))


def select_by_patch_stat(st: PruneState, block: int, x, scores):
    """mean / std: the tokens whose patch statistic (``patch_stat`` of the record) is highest."""
    return keep_highest(st, x, st.stat)


def select_evit_fuse(st: PruneState, block: int, x, scores):
    """EViT: the top-scored tokens stay, the others become one fused token (right after the prefix tokens)."""
    s = st.special()
    n = x.shape[1] - s
    k = kept_count(n, st.keep_rate)
    if k == n:
        return x
    idx = _highest(scores[:, st.fused:], k)
    fused = _fuse(st, x, scores, idx)
    out = torch.cat([x[:, :st.prefix], fused, _gather(x, idx + s)], dim=1)
    st.fused = 1
    st.positions = torch.gather(st.positions, 1, idx)
    return out


def select_tome(st: PruneState, block: int, x, scores):
    n = x.shape[1] - st.special()
    return _tome(st, x, n - kept_count(n, st.keep_rate))


def select_intensity_range(st: PruneState, block: int, x, scores):
    """The tokens whose patch mean lies in a kept range. ``matched="random"``: the control of a bucket drop at the
    same budget: each clip keeps as many tokens as the intensity range would leave it, drawn at random among its
    tokens."""
    b, n = x.shape[0], x.shape[1] - st.special()
    valid = _valid(st, x)
    keep = _in_range(st.stat, st.options) & valid
    if st.options.get("matched") == "random":
        draw = _random(st, b, n, block, x.device).masked_fill(~valid, -1)   # hashes are >= 0
        order = draw.argsort(dim=1, descending=True)
        ranks = torch.arange(n, device=x.device).expand(b, n) < keep.sum(1, keepdim=True)
        keep = torch.zeros_like(valid).scatter_(1, order, ranks)
    return _keep_per_clip(st, x, keep)


def select_adaptive(st: PruneState, block: int, x, scores):
    """The fewest top-scored tokens that hold ``mass`` of the clip's attention, at most the keep rate's count."""
    b, n = x.shape[0], x.shape[1] - st.special()
    valid = _valid(st, x)
    patch_scores = scores[:, st.fused:]
    cap = torch.ceil(st.keep_rate * valid.sum(1) - 1e-9).clamp_min(1).long()
    k = torch.minimum(_adaptive_count(patch_scores.masked_fill(~valid, 0.0), st.options.get("mass", 0.9)), cap)
    rank = patch_scores.masked_fill(~valid, -math.inf).argsort(dim=1, descending=True, stable=True)
    keep = torch.zeros_like(valid).scatter_(1, rank, torch.arange(n, device=x.device).expand(b, n) < k[:, None])
    return _keep_per_clip(st, x, keep)


def _valid(st: PruneState, x) -> torch.Tensor:
    """(B, n) which patch tokens of a per-clip batch are real (all of them before its first drop)."""
    b, n = x.shape[0], x.shape[1] - st.special()
    return st.valid if st.valid is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)


def _keep_per_clip(st: PruneState, x, keep: torch.Tensor):
    """Per-clip methods: every clip keeps its own tokens ``keep`` (B, n) (a budget that depends on the clip: these
    read counts into Python and do not compile into one graph). A batch stays one tensor: each clip keeps its
    tokens in patch order, padded to the batch's largest count, and ``valid`` marks the real ones; later blocks
    mask the padding out of attention, scoring and pooling, so each clip's output is the one it gets alone
    (tested), and token counts (hence MACs) are per clip, as a variable-length runtime would execute."""
    if st.valid is None and bool(keep.all()):
        return x
    count = keep.sum(1)
    # Kept tokens first, in patch order (a stable sort of the "dropped" flag), then as much padding as needed.
    idx = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : int(count.max())]
    st.valid = torch.arange(idx.shape[1], device=x.device)[None] < count[:, None]
    if bool(st.valid.all()):
        st.valid = None
    return st.keep(x, idx)


def in_range_counts(stat: torch.Tensor, options: dict) -> torch.Tensor:
    """(B,) patches of each clip that intensity_range keeps at its first drop (and its matched control draws)."""
    return _in_range(stat, options).sum(1)


def first_drop_counts(model, x: torch.Tensor, settings: PruneSettings) -> torch.Tensor | None:
    """(B,) patch tokens each clip keeps at the first drop when the input alone decides it (``first_counts`` of the
    method's record, e.g. intensity_range), else None. A per-clip batch is padded to its largest count, so
    ``evaluate`` batches clips of similar counts together: one UrbanSound8K bucket drop that keeps about half the
    tokens otherwise costs as much as the unpruned model."""
    spec = pruning_method(settings.method)
    if spec.first_counts is None:
        return None
    return load_function(spec.first_counts)(_patch_stat(model, x, spec.patch_stat), settings.options)


def _patch_stat(model, x: torch.Tensor, stat: str) -> torch.Tensor:
    """(B, n) a method's ``patch_stat`` ("mean" or "std") of the input patch under every patch token."""
    pixels = patch_pixels(model, x)
    return pixels.std(dim=-1) if stat == "std" else pixels.mean(dim=-1)


def _in_range(stat: torch.Tensor, options: dict) -> torch.Tensor:
    ranges = options.get("keep_ranges") or [(options.get("lo", -math.inf), options.get("hi", math.inf))]
    keep = torch.zeros_like(stat, dtype=torch.bool)
    for lo, hi in ranges:
        keep |= (stat >= lo) & (stat < hi)
    return keep


def _adaptive_count(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """(B,) fewest tokens per clip whose share of the clip's attention mass reaches ``mass``."""
    ranked = scores.sort(dim=1, descending=True).values
    share = ranked.cumsum(1) / ranked.sum(1, keepdim=True).clamp_min(1e-12)
    return (share < mass).sum(1) + 1


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A bijective hash of 32-bit values, for Python ints and int64 tensors alike (offset, xor-shift / multiply).
    Every multiplier is odd, so each round is a bijection mod 2**32, and below 2**31, so an int64 product of a
    32-bit value never overflows: the same numbers on any device, eager or compiled."""
    x = (x + 0x9E3779B9) & _MASK32   # an offset, so that 0 does not hash to 0
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _MASK32
    x = ((x ^ (x >> 16)) * 0x297A2D39) & _MASK32
    return x ^ (x >> 15)


def _random(st: PruneState, b, n, block, device):
    """(B, n) random ranking scores for one drop, as a counter-based draw: the score of token ``j`` of clip ``c`` is
    a hash of (seed, block, forward call, c, j). No generator state, no host round trip: the call counter is a
    tensor on the model's device and everything else is a trace-time constant, so the draw compiles into the
    graph and gives the same kept tokens on CPU and CUDA, eager and compiled. Within a clip the hash inputs
    ``key_c + j`` are distinct mod 2**32 and the hash is a bijection, so scores never tie (topk stays exact)."""
    seed = int(st.options.get("seed", 0))
    base = _mix32(_mix32(seed ^ (seed >> 32)) ^ block)            # Python int: one stream per (seed, block)
    calls = st.calls_now
    key = _mix32(_mix32(calls ^ (calls >> 32)) ^ base)            # () tensor: ... and per forward call
    clip = _mix32(key ^ _mix32(torch.arange(b, device=device)))   # (B,): ... and per clip
    return _mix32(clip[:, None] + torch.arange(n, device=device))


def _fuse(st: PruneState, x, scores, idx):
    """EViT: one token = attention-weighted mean of the pruned tokens (and of the previous fused token)."""
    s = st.special()
    n = x.shape[1] - s
    keep = torch.zeros(x.shape[0], n, dtype=torch.bool, device=x.device).scatter_(1, idx, True)
    pruned = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, : n - idx.shape[1]]
    members = _gather(x[:, s:], pruned)
    weights = torch.gather(scores[:, st.fused:], 1, pruned)
    if st.fused:  # the old fused token joins with its own score
        members = torch.cat([x[:, st.prefix:s], members], dim=1)
        weights = torch.cat([scores[:, :1], weights], dim=1)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return weights.unsqueeze(1) @ members   # (B, 1, D)


def _tome(st: PruneState, x, remove):
    """Token merging by bipartite soft matching on the patch tokens, size-weighted averages."""
    s = st.special()
    head, t = x[:, :s], x[:, s:]
    if st.sizes is None:   # the first drop of a forward: every token is one patch
        st.sizes = torch.ones(t.shape[0], t.shape[1], device=x.device)
    for _ in tome_rounds(t.shape[1], remove):
        r = min(remove, (t.shape[1] + 1) // 2)
        metric = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sim = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)          # (B, n_src, n_dst)
        best, dst = sim.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        merged, stay = order[:, :r], order[:, r:]
        src_x, dst_x = t[:, ::2], t[:, 1::2]
        src_sz, dst_sz = st.sizes[:, ::2], st.sizes[:, 1::2]
        src_pos, dst_pos = st.positions[:, ::2], st.positions[:, 1::2]
        m_dst = torch.gather(dst, 1, merged)
        m_sz = torch.gather(src_sz, 1, merged)
        # Size-weighted sums: each destination collects the merged sources, then divides by its new size.
        new_x = (dst_x * dst_sz[..., None]).scatter_add(
            1, m_dst[..., None].expand(-1, -1, t.shape[2]), _gather(src_x, merged) * m_sz[..., None])
        new_sz = dst_sz.scatter_add(1, m_dst, m_sz)
        new_x = new_x / new_sz[..., None]
        t = torch.cat([_gather(src_x, stay), new_x], dim=1)
        sizes = torch.cat([torch.gather(src_sz, 1, stay), new_sz], dim=1)
        pos = torch.cat([torch.gather(src_pos, 1, stay), dst_pos], dim=1)
        # Back to original patch order, so the next round's alternation pairs neighbours again.
        order = pos.argsort(dim=1)
        t, st.sizes, st.positions = _gather(t, order), torch.gather(sizes, 1, order), torch.gather(pos, 1, order)
        remove -= r
    return torch.cat([head, t], dim=1)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (B, k) of ``x`` (B, n, D): one indexed copy."""
    b, n, d = x.shape
    if x.is_contiguous():  # whole-row copies (index_select) are several times faster than element-wise gather
        flat = (idx + torch.arange(b, device=idx.device).unsqueeze(1) * n).reshape(-1)
        return x.reshape(b * n, d).index_select(0, flat).view(b, idx.shape[1], d)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, d))


ATTN_CHUNK_BYTES = 1 << 20   # CPU: attention matrices per chunk in _attend_received, about one core's L2 cache


def _softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over keys; ``mask`` (bool, broadcastable, True = key takes part) gives padding keys zero weight."""
    return (logits if mask is None else logits.masked_fill(~mask, -math.inf)).softmax(dim=-1)


def _attend_received(attn, q, k, v, query_start, mask=None):
    """Explicit attention computed a few (clip, head) matrices at a time on CPU, so each chunk stays in cache instead
    of streaming the whole (B, H, N, N) tensor through memory three times (on a GPU, where small kernels cost more
    than memory traffic, in one go). Returns the output (B, H, N, hd) and the attention each token receives,
    averaged over heads and over queries from ``query_start`` on (padding queries and keys excluded: ``mask``)."""
    b, h, n, hd = q.shape
    q, k, v = ((q * attn.scale).reshape(b * h, n, hd), k.reshape(b * h, n, hd), v.reshape(b * h, n, hd))
    if mask is not None:   # (B, 1, 1, N) -> one row per (clip, head); padding queries do not vote
        mask = mask.expand(b, h, 1, n).reshape(b * h, 1, n)
        voters = mask[:, 0, query_start:].to(q.dtype)
    step = max(1, ATTN_CHUNK_BYTES // (n * n * q.element_size())) if q.device.type == "cpu" else b * h
    outs, received = [], []
    for i in range(0, b * h, step):
        a = _softmax(q[i:i + step] @ k[i:i + step].transpose(-2, -1), None if mask is None else mask[i:i + step])
        if mask is None:
            received.append(a[:, query_start:].sum(dim=1))
        else:
            received.append((voters[i:i + step, None] @ a[:, query_start:])[:, 0])
        outs.append(attn.attn_drop(a) @ v[i:i + step])
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    received = torch.cat(received) if len(received) > 1 else received[0]
    n_voters = n - query_start if mask is None else voters.view(b, h, -1)[:, 0].sum(1, keepdim=True).clamp_min(1)
    return out.view(b, h, n, hd), received.view(b, h, n).sum(dim=1) / (h * n_voters)


# ---------------------------------------------------------------------------------------------------------------
# The re-classed modules. Each mixin sits in front of the module's own class, so everything else stays timm's.

class _ScoringAttention:
    # Mirrors timm 1.0.31 `vision_transformer.Attention.forward` (qkv, q/k norm, fused or explicit softmax, norm,
    # proj) and also returns the head-averaged scores the drop needs; re-check it when timm is upgraded.
    def forward(self, x, attn_mask=None, is_causal=False, score_mode=None, query_start=1):
        if score_mode is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        # attn_mask here can only be the padding mask of a per-clip method: (B, 1, 1, N) bool
        if getattr(self, "gate", None) is not None or is_causal:
            raise ConfigError("pruning: gated or causal attention is not supported")
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        drop = self.attn_drop.p if self.training else 0.0
        if score_mode == "cls" and self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
            scores = _softmax((q[:, :, :1] * self.scale) @ k.transpose(-2, -1), attn_mask)[:, :, 0].mean(dim=1)
        elif self.fused_attn:  # received: every attention row is needed, but never all of them at once
            out, scores = _attend_received(self, q, k, v, query_start, attn_mask)
        else:
            attn = _softmax((q * self.scale) @ k.transpose(-2, -1), attn_mask)
            if score_mode == "cls":
                scores = attn[:, :, 0].mean(dim=1)
            elif attn_mask is None:  # attention received, averaged over heads and patch queries
                scores = attn[:, :, query_start:].mean(dim=(1, 2))
            else:                    # ... over the real (non-padding) patch queries
                voters = attn_mask[:, 0, 0, query_start:].to(attn.dtype)          # (B, Nq)
                scores = (voters[:, None, :, None] * attn[:, :, query_start:]).sum(dim=(1, 2)) / (
                    attn.shape[1] * voters.sum(1, keepdim=True).clamp_min(1))
            out = self.attn_drop(attn) @ v
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(out)), scores


class _PrunedBlock:
    # Mirrors timm 1.0.31 `vision_transformer.Block.forward` (norm1, attn, ls1, drop_path1, then the MLP branch),
    # with the token drop after the attention branch (scored by it) and before the MLP branch.
    def forward(self, x, attn_mask=None, is_causal=False):
        st: PruneState = self._tprune
        i = self._tprune_index
        drops = i in st.drop_loc and st.may_drop(x.shape[1])
        padding = st.attn_mask(x)
        if padding is not None:
            if attn_mask is not None or is_causal:
                raise ConfigError("pruning: per-clip methods do not combine with an external attention mask")
            attn_mask = padding
        n_in = st.token_counts()
        if not drops and st.record is None:
            st.log_tokens(n_in, x.shape[1], x.shape[1], 0, x.shape[0], x.device)
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        scores = None
        if st.record is not None or (drops and st.spec.scored):
            mode = "cls" if st.family == "ast" else "received"
            y, scores = self.attn(self.norm1(x), attn_mask=attn_mask, score_mode=mode, query_start=st.special())
            scores = scores[:, st.prefix:]
        else:
            y = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        x = x + self.drop_path1(self.ls1(y))
        if st.record is not None:
            st.record._add(st.record.scores, i, scores)
            st.record._add(st.record.positions, i, _with_fused(st.positions, st.fused))
        n_attn, n_patch = x.shape[1], x.shape[1] - st.special()
        if drops:
            x = select(st, i, x, scores)
            if st.record is not None:
                st.record._add(st.record.kept, i, _with_fused(st.positions, st.fused))
        st.log_tokens(n_in, n_attn, x.shape[1], n_patch - (x.shape[1] - st.special()), x.shape[0], x.device)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _with_fused(positions: torch.Tensor, fused: int) -> torch.Tensor:
    if not fused:
        return positions
    return torch.cat([torch.full_like(positions[:, :1], FUSED_POSITION), positions], dim=1)


def _pad_positions(rows: list) -> torch.Tensor:
    """(1, k_i) position rows of clips run one by one -> one (clips, max k_i) tensor padded with PADDING_POSITION."""
    width = max(r.shape[1] for r in rows)
    return torch.cat([F.pad(r, (0, width - r.shape[1]), value=PADDING_POSITION) for r in rows])


class _PrunedModel:
    def forward(self, x, **kwargs):
        st: PruneState = self._tprune
        if st.spec.per_clip and torch.compiler.is_compiling():
            raise ConfigError(f"{st.method}: its token budget depends on the clip (data-dependent shapes), so it "
                              f"cannot be compiled as one graph; run it eagerly or use a static-budget method "
                              f"({', '.join(fixed_budget_methods())})")
        if st.spec.per_clip and x.shape[0] > 1 and st.record is not None:
            # Records hold each clip's own tokens, so a recorded per-clip method runs clip by clip.
            outs, lasts = [], []
            for i in range(x.shape[0]):
                outs.append(self.forward(x[i:i + 1], **kwargs))
                lasts.append(st.last)
            st.last = LastForward(tokens=torch.cat([f.tokens for f in lasts]),
                                  positions=_pad_positions([f.positions for f in lasts]),
                                  n_empty=sum(f.n_empty for f in lasts), calls=lasts[-1].calls)
            return torch.cat(outs)
        out = super().forward(x, **kwargs)
        self._tprune_finish(x.shape[0])
        return out

    def _tprune_finish(self, b: int):
        """After a forward: count it (in place, on the device: a compiled graph neither syncs nor recompiles for
        it) and keep what ``last_forward`` reports."""
        st: PruneState = self._tprune
        self._tprune_calls.add_(1)
        st.finish(b, self._tprune_calls.clone())
        if st.record is not None:
            st.record.token_rows.append(st.last.tokens)

    def pool(self, x, pool_type=None):
        valid = self._tprune.valid
        if valid is None or self.family == "ast":   # AST pools its two prefix tokens: padding never reaches them
            return super().pool(x, pool_type)
        w = valid.to(x.dtype)[..., None]
        mean = (x[:, self.num_prefix_tokens:] * w).sum(1) / w.sum(1).clamp_min(1)
        # A clip left with no patch token is scored from its CLS output (as it would be alone).
        return torch.where(valid.any(1, keepdim=True), mean, x[:, 0])

    def forward_features(self, x, **kwargs):
        self._tprune.begin(self, self.to_image(x))
        return super().forward_features(x, **kwargs)


_CLASSES: dict = {}


def _reclass(obj, mixin):
    base = type(obj)
    key = (mixin, base)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Pruned{base.__name__}", (mixin, base), {})
    obj._tprune_base = base
    obj.__class__ = _CLASSES[key]


def apply_pruning(model, method: str = "topk", keep_rate: float = 0.5, drop_loc=DEFAULT_DROP_LOC, **options):
    """Patch ``model`` (an ``AudioViT``) in place to prune tokens; returns the model. Re-applying replaces."""
    drop_loc = tuple(sorted(int(b) for b in drop_loc))
    check_pruning(method, keep_rate, drop_loc, len(model.blocks), options)
    if is_pruned(model):
        remove_pruning(model)
    state = PruneState(model, PruneSettings(method, float(keep_rate), drop_loc, dict(options)))
    model._tprune = state
    device = next(model.parameters()).device
    with torch.inference_mode(False):   # a normal tensor, so forwards in and out of inference mode may count
        # Forwards so far, on the model's device (moves with it); random pruning keys its draws with it.
        model.register_buffer("_tprune_calls", torch.zeros((), dtype=torch.long, device=device), persistent=False)
    _reclass(model, _PrunedModel)
    for i, blk in enumerate(model.blocks):
        blk._tprune, blk._tprune_index = state, i
        _reclass(blk, _PrunedBlock)
        _reclass(blk.attn, _ScoringAttention)
    return model


def remove_pruning(model):
    """Undo ``apply_pruning``: original classes back, bookkeeping gone."""
    if not is_pruned(model):
        return model
    for obj in [model, *model.blocks, *(blk.attn for blk in model.blocks)]:
        if hasattr(obj, "_tprune_base"):
            obj.__class__ = obj._tprune_base
            del obj._tprune_base
        for name in ("_tprune", "_tprune_index"):
            obj.__dict__.pop(name, None)
    model._buffers.pop("_tprune_calls", None)
    return model


def is_pruned(model) -> bool:
    """True while ``apply_pruning`` is in effect on ``model``."""
    return isinstance(getattr(model, "_tprune", None), PruneState)


def _state(model, caller: str) -> PruneState:
    if not is_pruned(model):
        raise ConfigError(f"{caller}: the model is not patched; call apply_pruning first")
    return model._tprune


def settings(model) -> PruneSettings | None:
    """The pruning ``model`` is patched with, or None for an unpatched model."""
    return model._tprune.settings if is_pruned(model) else None


def last_forward(model) -> LastForward:
    """What the last forward of a patched model did (token counts per block, surviving positions, empty clips)."""
    last = _state(model, "last_forward").last
    if last is None:
        raise ConfigError("last_forward: the patched model has not run a forward yet")
    return last


def call_count(model) -> int:
    """Forwards a patched model has run; random pruning seeds each forward's draw with it."""
    _state(model, "call_count")
    return int(model._tprune_calls)


def set_call_count(model, calls: int) -> None:
    """Set the forward counter (a resumed training run continues the random draws where it stopped)."""
    if not isinstance(calls, int) or isinstance(calls, bool) or not 0 <= calls < 2 ** 63:
        raise ConfigError(f"set_call_count: calls must be an int >= 0, got {calls!r}")
    _state(model, "set_call_count")
    model._tprune_calls.fill_(calls)


def set_keep_rate(model, keep_rate: float):
    """Change the keep rate of a patched model (pruning-aware fine-tuning steps it every iteration)."""
    st = _state(model, "set_keep_rate")
    check_pruning(st.method, keep_rate, st.drop_loc, len(model.blocks), st.options)
    st.settings = replace(st.settings, keep_rate=float(keep_rate))


@contextmanager
def patched(model, setting: PruneSettings | None):
    """Run the block with ``model`` patched as ``setting`` says (None: unpatched), then put back exactly what was
    there before, on success or error: "evaluate under a setting, then restore" in one place."""
    before = settings(model)
    calls = call_count(model) if before is not None else None   # random draws continue where they were
    if setting is None:
        remove_pruning(model)
    else:
        apply_pruning(model, setting.method, setting.keep_rate, setting.drop_loc, **setting.options)
    try:
        yield model
    finally:
        remove_pruning(model)
        if before is not None:
            apply_pruning(model, before.method, before.keep_rate, before.drop_loc, **before.options)
            set_call_count(model, calls)


@contextmanager
def record(model):
    """Record scores, provenance and token counts of every forward inside the block (patches with keep rate 1.0
    and ``topk`` if the model is not patched yet, and unpatches afterwards)."""
    patched_here = not is_pruned(model)
    if patched_here:
        apply_pruning(model, "topk", 1.0)
    rec = PruneRecord()
    model._tprune.record = rec
    try:
        yield rec
    finally:
        model._tprune.record = None
        if patched_here:
            remove_pruning(model)


# ---------------------------------------------------------------------------------------------------------------
# Shared prefixes: every setting that first drops at block L runs blocks 0..L-1 unpruned, so a grid of settings
# over the same clips can compute those blocks once (experiments.evaluate_grid does).

def hidden_before(model, x: torch.Tensor, start: int) -> torch.Tensor:
    """Tokens entering block ``start`` on the unpruned path (patch embedding, positions, blocks 0..start-1)."""
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(model.to_image(x)))))
    for blk in model.blocks[:start]:
        h = Block.forward(blk, h)   # timm's own block, patched or not: no drop happens before ``start``
    return h


def forward_from(model, x: torch.Tensor, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """Logits of a patched model whose blocks 0..start-1 were already run (``hidden_before``): the same numbers and
    the same ``last_forward`` as ``model(x)``, without recomputing the prefix. No drop may happen before ``start``."""
    st = _state(model, "forward_from")
    if st.record is not None or min(st.drop_loc) < start:
        raise ConfigError(f"forward_from: start {start} is past the first drop location {min(st.drop_loc)}, "
                          f"or the model is recording")
    st.begin(model, model.to_image(x))
    n = hidden.shape[1]
    st.counts = [(n, n, 0)] * start
    h = hidden
    for blk in model.blocks[start:]:
        h = blk(h)
    out = model.forward_head(model.norm(h))
    model._tprune_finish(x.shape[0])
    return out
