"""The fast pruning path (fused SDPA where no score is needed, CLS row / chunked explicit attention where one is)
keeps the same tokens and gives the same outputs as the explicit-attention path; the benchmark returns sane
numbers. Nothing here is timed: speed is measured by `tprune bench`, not asserted."""
import copy
import json
import math

import pandas as pd
import pytest
import torch

from tprune_core import pruning
from tprune_core.bench import bench, bench_group, flat_row
from tprune_core.cli import main
from tprune_core.errors import ConfigError
from tprune_core.macs import count_macs, flop_counter_macs
from tprune_core.models import OneDNNLinear, create_model, onednn_linear
from tprune_core.pruning import METHODS, apply_pruning, last_forward, record

FAMILIES = ["ast", "audiomae"]
FRAMES, MEL = 96, 64                      # 6 x 4 = 24 patch tokens: small, and 0.7 * n is not an integer
OPTIONS = {"random": {"seed": 4}, "intensity_range": {"lo": -0.05, "hi": 0.05}, "adaptive": {"mass": 0.6}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # the test machine is shared
    yield
    torch.set_num_threads(n)


def make_pair(family, method, rate, seed=0):
    """The same tiny model twice, pruned alike: fast path (timm's default) and explicit attention everywhere."""
    torch.manual_seed(seed)
    stock = create_model(family, "tiny", FRAMES, 5, mel=MEL).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # sharper attention than timm's init, so scores are far from ties
        for blk in stock.blocks:
            blk.attn.qkv.weight.copy_(torch.randn(blk.attn.qkv.weight.shape, generator=g) * 0.08)
    fast = apply_pruning(copy.deepcopy(stock), method, rate, **OPTIONS.get(method, {}))
    slow = apply_pruning(copy.deepcopy(stock), method, rate, **OPTIONS.get(method, {}))
    for blk in slow.blocks:
        blk.attn.fused_attn = False
    assert all(blk.attn.fused_attn for blk in fast.blocks)
    return fast, slow


def inputs(b=3, seed=1):
    return torch.randn(b, FRAMES, MEL, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rate", [0.7, 0.4])
@pytest.mark.parametrize("chunk_bytes", [pruning.ATTN_CHUNK_BYTES, 1])   # 1: one (clip, head) per chunk
def test_fast_path_matches_explicit(family, method, rate, chunk_bytes, monkeypatch):
    monkeypatch.setattr(pruning, "ATTN_CHUNK_BYTES", chunk_bytes)
    fast, slow = make_pair(family, method, rate)
    x = inputs()
    with torch.inference_mode():
        # plain forward: scores only in drop blocks, SDPA elsewhere
        out_f, out_s = fast(x), slow(x)
        torch.testing.assert_close(out_f, out_s, atol=1e-5, rtol=0)
        assert torch.equal(last_forward(fast).tokens, last_forward(slow).tokens)
        tokens = last_forward(fast).tokens
        assert (tokens[:, -1, 0] < tokens[:, 0, 0]).all()   # the models really pruned
        # recorded forward: scores in every block, kept positions at every drop
        with record(fast) as rf, record(slow) as rs:
            rec_f, rec_s = fast(x), slow(x)
    torch.testing.assert_close(rec_f, rec_s, atol=1e-5, rtol=0)
    if method != "random":   # random draws anew on every forward (seeded by the call count)
        torch.testing.assert_close(rec_f, out_f, atol=1e-5, rtol=0)
    assert set(rf.kept) == set(rs.kept) == {3, 6, 9}
    for b in rf.kept:
        for kf, ks in zip(rf.kept[b], rs.kept[b], strict=True):
            assert torch.equal(kf, ks), (b, method)
    for b in range(12):
        for sf, ss in zip(rf.scores[b], rs.scores[b], strict=True):
            torch.testing.assert_close(sf, ss, atol=1e-6, rtol=1e-5)
        for pf, ps in zip(rf.positions[b], rs.positions[b], strict=True):
            assert torch.equal(pf, ps)
    assert torch.equal(rf.tokens, rs.tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_received_attention_chunks(family, monkeypatch):
    """Chunked received attention equals the written-out softmax, whatever the chunk size; over all keys (prefix
    included) the column means add up to 1, as softmax rows do."""
    torch.manual_seed(0)
    m = create_model(family, "tiny", FRAMES, 5, mel=MEL).eval()
    attn = m.blocks[0].attn
    q, k, v = torch.randn(3, 2, attn.num_heads, 25, attn.head_dim).unbind(0)
    for chunk in (1, 25 * 25 * 4 * 4, 1 << 20):   # one matrix, four (not dividing 2 x 3 evenly), all at once
        monkeypatch.setattr(pruning, "ATTN_CHUNK_BYTES", chunk)
        out, received = pruning._attend_received(attn, q, k, v, query_start=1)
        probs = (q * attn.scale @ k.transpose(-2, -1)).softmax(-1)
        torch.testing.assert_close(out, probs @ v, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(received, probs[:, :, 1:].mean(dim=(1, 2)), atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(received.sum(dim=1), torch.ones(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_onednn_linear_prunes_like_the_explicit_path(family, method):
    """oneDNN linear layers on top of the fast path: the same kept tokens, scores and outputs (<= 1e-5) as
    explicit attention with timm's own linear layers."""
    fast, slow = make_pair(family, method, 0.4)
    onednn_linear(fast)
    assert sum(type(m) is OneDNNLinear for m in fast.modules()) == 4 * 12 + 1   # qkv, proj, fc1, fc2; head
    x = inputs()
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=0)
        assert torch.equal(last_forward(fast).tokens, last_forward(slow).tokens)
        with record(fast) as rf, record(slow) as rs:
            torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=0)
    assert all(hasattr(m, "_onednn_pack") for m in fast.modules() if isinstance(m, OneDNNLinear))
    for b in rf.kept:
        for kf, ks in zip(rf.kept[b], rs.kept[b], strict=True):
            assert torch.equal(kf, ks), (b, method)


def test_onednn_linear_keeps_the_module_contract():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.GELU(), torch.nn.Linear(20, 3, bias=False))
    m = onednn_linear(copy.deepcopy(ref))
    assert [type(x) for x in m] == [OneDNNLinear, torch.nn.GELU, OneDNNLinear]
    assert m.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), atol=1e-6, rtol=1e-5)
    assert hasattr(m[0], "_onednn_pack")                       # the oneDNN path ran (and packed its weight)
    # the weight changes -> the packed copy follows (in-place update, load_state_dict)
    other = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.GELU(), torch.nn.Linear(20, 3, bias=False))
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x), other(x), atol=1e-6, rtol=1e-5)
        m[2].weight.mul_(-1)
        other[2].weight.mul_(-1)
        torch.testing.assert_close(m(x), other(x), atol=1e-6, rtol=1e-5)
    # training: autograd takes nn.Linear's path, with nn.Linear's gradients
    m.zero_grad()
    other.zero_grad()
    m(x).square().sum().backward()
    other(x).square().sum().backward()
    for a, b in zip(m.parameters(), other.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
    # autocast keeps its own precision
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x).dtype == torch.bfloat16
    # copies and pickles leave the cache behind and still compute the same
    c = copy.deepcopy(m)
    assert not hasattr(c[0], "_onednn_pack") and type(c[0]) is OneDNNLinear
    with torch.no_grad():
        torch.testing.assert_close(c(x), other(x), atol=1e-6, rtol=1e-5)
    # a model made under inference_mode has no version counter: its weight is used as is, never cached stale
    with torch.inference_mode():
        frozen = onednn_linear(torch.nn.Linear(12, 4))
        y = frozen(x)
        frozen.weight.mul_(2)
        torch.testing.assert_close(frozen(x), 2 * y - frozen.bias, atol=1e-5, rtol=1e-5)
    assert not hasattr(frozen, "_onednn_pack")
    # and back
    onednn_linear(m, enabled=False)
    assert type(m[0]) is torch.nn.Linear and not hasattr(m[0], "_onednn_pack")


def test_flop_counter_sees_onednn_models():
    """The FLOP counter does not know oneDNN's op, so it must see nn.Linear's: MACs equal the analytic count."""
    torch.manual_seed(0)
    m = onednn_linear(apply_pruning(create_model("audiomae", "tiny", FRAMES, 5, mel=MEL).eval(), "topk", 0.5))
    measured = flop_counter_macs(m, inputs(b=1))
    assert measured == count_macs("audiomae", "tiny", FRAMES, 0.5, mel=MEL, num_classes=5)["macs"]


def test_gather_contiguous_and_strided():
    x = torch.randn(3, 10, 4)
    idx = torch.tensor([[0, 2, 9], [1, 1, 5], [8, 3, 4]])
    want = torch.stack([x[b, idx[b]] for b in range(3)])
    assert torch.equal(pruning._gather(x, idx), want)
    xs = x[:, ::2]                                   # strided view: the element-wise gather
    want = torch.stack([xs[b, idx[b] % 5] for b in range(3)])
    assert torch.equal(pruning._gather(xs, idx % 5), want)


# ---------------------------------------------------------------------------------------------------------------
# the benchmark (numbers are checked for consistency, never against a speed)

def check_result(r, repeats):
    for key in ("ms_full", "ms_pruned", "ms_kr1", "speedup", "mac_ratio", "efficiency", "overhead_at_kr1"):
        assert isinstance(r[key], float) and math.isfinite(r[key]), key
    assert r["ms_full"] > 0 and r["ms_pruned"] > 0
    assert r["speedup"] == pytest.approx(r["ms_full"] / r["ms_pruned"])
    assert r["efficiency"] == pytest.approx(r["speedup"] / r["mac_ratio"])
    assert r["overhead_at_kr1"] == pytest.approx(r["ms_kr1"] / r["ms_full"] - 1)
    for name in ("full", "pruned", "kr1", "speedup_paired", "overhead_paired"):
        s = r["spread"][name]
        assert s["n"] == repeats and s["q25"] <= s["median"] <= s["q75"] and s["iqr"] >= 0 and s["mad"] >= 0
    assert r["spread"]["full"]["median"] == r["ms_full"]
    assert r["repeats"] == repeats and r["device"] == "cpu" and r["torch"] == torch.__version__
    assert r["compile"] in ("none", "default") and r["cpu_name"] == r["device_name"] and r["threads"] >= 1
    assert r["first_call_s_full"] > 0 and r["first_call_s_pruned"] > 0 and r["first_call_s_kr1"] > 0


def test_bench_keys_and_mac_ratio():
    before = torch.get_num_threads()
    r = bench("audiomae", "tiny", 64, 0.5, batch=2, threads=1, repeats=3, warmup=1, mel=64)
    check_result(r, 3)
    assert torch.get_num_threads() == before and r["threads"] == 1
    assert r["linear"] == "onednn"                                 # auto: fp32 on the CPU
    full = count_macs("audiomae", "tiny", 64, 1.0, mel=64)["macs"]
    pruned = count_macs("audiomae", "tiny", 64, 0.5, mel=64)["macs"]
    assert r["mac_ratio"] == pytest.approx(full / pruned) and r["mac_ratio"] > 1.5
    assert (r["family"], r["keep_rate"], r["method"], r["batch"], r["tokens"]) == ("audiomae", 0.5, "topk", 2, 16)
    row = flat_row(r)
    assert "spread" not in row and row["drop_loc"] == "3 6 9" and row["full_q25"] <= row["ms_full"]


def test_bench_group_per_clip_method_and_no_overhead():
    rs = bench_group("ast", "tiny", 64, [("adaptive", 0.5), ("tome", 0.7)], batch=2, threads=1, repeats=3,
                     warmup=1, mel=64, overhead=False)
    assert [(r["method"], r["keep_rate"]) for r in rs] == [("adaptive", 0.5), ("tome", 0.7)]
    assert rs[0]["ms_full"] == rs[1]["ms_full"]                  # one unpruned model timed for the group
    assert all(math.isnan(r["overhead_at_kr1"]) for r in rs)
    assert all(r["mac_ratio"] > 1.0 for r in rs)
    tome = count_macs("ast", "tiny", 64, 1.0, mel=64, method="tome")["macs"] / count_macs(
        "ast", "tiny", 64, 0.7, mel=64, method="tome")["macs"]
    assert rs[1]["mac_ratio"] == pytest.approx(tome)


def test_bench_settings_stop_rule_and_overhead_models():
    from tprune_core.bench import DTYPES, BenchSettings
    from tprune_core.rules import BENCH_DTYPES
    assert tuple(DTYPES) == BENCH_DTYPES                          # every dtype the rules allow has an autocast
    base = dict(family="ast", size="tiny", frames=64, batch=1, device=torch.device("cpu"), dtype="fp32",
                drop_loc=(3, 6, 9), mel=64, num_classes=527, seed=0, linear="default", repeats=None, min_seconds=2.0,
                max_repeats=20, warmup=None, overhead=True, progress=False)
    s = BenchSettings(**base)
    assert not s.finished(6, 99.0) and not s.finished(7, 1.0) and s.finished(7, 2.0) and s.finished(20, 0.0)
    fixed = BenchSettings(**dict(base, repeats=3))
    assert not fixed.finished(2, 99.0) and fixed.finished(3, 0.0)
    assert s.warmup_rounds() == 2 and BenchSettings(**dict(base, device=torch.device("cuda"))).warmup_rounds() == 10
    assert s.overhead_methods(["tome", "topk"]) == ["tome", "topk"]
    assert BenchSettings(**dict(base, overhead=False)).overhead_methods(["tome", "topk"]) == []
    assert BenchSettings(**dict(base, overhead=["topk"])).overhead_methods(["tome", "topk"]) == ["topk"]
    with pytest.raises(AttributeError):
        s.repeats = 5                                             # frozen


@pytest.mark.parametrize("kwargs, name", [
    (dict(method="nope"), "method"), (dict(repeats=2), "repeats"), (dict(dtype="fp8"), "dtype"),
    (dict(batch=0), "batch"), (dict(threads=0), "threads"), (dict(keep_rate=1.5), "keep_rate"),
    (dict(linear="mkl"), "linear"), (dict(linear="onednn", dtype="bf16"), "linear"),
    (dict(compile="jit"), "compile"), (dict(compile="reduce-overhead"), "compile: 'reduce-overhead'"),
    (dict(compile="default", method="adaptive"), "compile: adaptive"),
    (dict(compile="default", linear="onednn"), "linear: 'onednn' layers do not compile"),
])
def test_bench_bad_arguments(kwargs, name):
    args = dict(family="ast", size="tiny", frames=64, keep_rate=0.5, repeats=3, mel=64)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=name):
        bench(**args)


def test_bench_compiles_every_model_alike_and_times_the_first_call_apart(monkeypatch):
    """``compile``: the stock, the keep-rate-1.0 and the pruned model each go through the same ``torch.compile``
    call (fullgraph, static shapes), whose first call is reported apart. The compiler is swapped for aot_eager
    and the models cut to 4 blocks so that this stays a seconds-long check of the plumbing, not a timing."""
    import tprune_core.bench as B
    calls, real_compile, real_create = [], torch.compile, B.create_model

    def cheap_compile(model, mode=None, **kwargs):
        calls.append((type(model).__name__, mode, kwargs))
        return real_compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", cheap_compile)
    monkeypatch.setattr(B, "create_model", lambda *a, **k: real_create(*a, depth=4, **k))
    r = bench("ast", "tiny", 64, 0.5, batch=2, threads=1, repeats=3, warmup=2, mel=64, drop_loc=(1, 2),
              compile="default")
    check_result(r, 3)
    assert r["compile"] == "default" and r["linear"] == "default"       # auto: timm's layers under a compile
    assert [c[0] for c in calls] == ["AudioViT", "PrunedAudioViT", "PrunedAudioViT"]
    assert all(c[1:] == (None, dict(fullgraph=True, dynamic=False)) for c in calls)
    assert r["first_call_s_pruned"] * 1e3 > 5 * r["ms_pruned"]         # compiling: kept out of the medians
    from tprune_core.macs import model_macs
    pruned = apply_pruning(real_create("ast", "tiny", 64, 527, mel=64, depth=4).eval(), "topk", 0.5, (1, 2))
    with torch.no_grad():
        pruned(torch.randn(1, 64, 64))
    full = model_macs(real_create("ast", "tiny", 64, 527, mel=64, depth=4))
    assert r["mac_ratio"] == pytest.approx(float(full.mean() / model_macs(pruned).mean()))   # counted eagerly
    assert flat_row(r)["compile"] == "default"


def test_cli_bench_json(capsys):
    assert main(["bench", "--family", "ast", "--size", "tiny", "--frames", "64", "--keep-rate", "0.5",
                 "--threads", "1", "--repeats", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    check_result(r, 3)
    assert (r["family"], r["size"], r["frames"], r["tokens"]) == ("ast", "tiny", 64, 32)
    assert main(["bench", "--family", "ast", "--size", "tiny", "--frames", "64", "--keep-rate", "0.5",
                 "--threads", "1", "--repeats", "3", "--linear", "default", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["linear"] == "default"
    assert main(["bench", "--family", "ast", "--size", "tiny", "--frames", "64", "--keep-rate", "0.5",
                 "--method", "bogus", "--repeats", "3"]) == 2
    assert "method" in capsys.readouterr().err


def test_load_grid_reads_the_stored_tables_and_names_bad_ones(tmp_path):
    from tprune_core.bench import GRID_COLUMNS, load_grid
    from tprune_core.errors import TpruneError
    row = {c: 1 for c in GRID_COLUMNS}
    row.update(family="ast", method="topk", dtype="fp32", device="cpu", device_name="X", efficiency=0.8)
    pd.DataFrame([row, {**row, "efficiency": 0.9}]).to_csv(tmp_path / "cpu_grid.csv", index=False)
    (tmp_path / "cpu_grid.json").write_text('{"device": "cpu", "threads": 2}')
    df, meta = load_grid("cpu_grid", root=tmp_path)
    assert df.efficiency.tolist() == [0.8, 0.9] and meta == {"device": "cpu", "threads": 2}
    with pytest.raises(TpruneError, match="gpu_grid.csv"):
        load_grid("gpu_grid", root=tmp_path)
    pd.DataFrame([{"family": "ast"}]).to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(TpruneError, match="missing columns"):
        load_grid("odd", root=tmp_path)
    # the committed grids load: every row has a finite efficiency
    for name in ("cpu_grid", "gpu_grid"):
        df, meta = load_grid(name)
        assert len(df) and df.efficiency.between(0.05, 2.0).all() and meta["device"] in ("cpu", "cuda")


def _run_grid_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "run_grid.py"
    spec = importlib.util.spec_from_file_location("run_grid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_grid_plans_compile_modes_and_resumes(tmp_path, monkeypatch):
    """bench/run_grid.py: eager groups first, then each compile mode (not for the linear-backend comparison groups,
    not reduce-overhead on the CPU); rows record ``compile``; a second run finds every row done. Timing is faked:
    only the plan and the bookkeeping are under test."""
    from tprune_core.rules import FIXED_BUDGET
    G = _run_grid_module()
    cpu = G.runs(G.grid("cpu", "full", ["ast"]), ["none", "default", "reduce-overhead"], "cpu")
    modes = [mode for _, mode in cpu]
    assert modes == sorted(modes, key=["none", "default"].index) and "reduce-overhead" not in modes
    assert all(g.get("linear", "auto") == "auto" for g, mode in cpu if mode != "none")
    assert len([1 for _, mode in cpu if mode == "none"]) > len([1 for _, mode in cpu if mode == "default"]) > 0
    static = G.grid("cuda", "static", ["audiomae"])
    assert [m for m, _ in static[0]["configs"]] == list(FIXED_BUDGET) and static[0]["tokens"] == 256
    assert [mode for _, mode in G.runs(static, ["none", "default", "reduce-overhead"], "cuda")] == [
        "none", "default", "reduce-overhead"]

    calls = []
    import torch
    here = G._device_name(torch.device("cpu"))

    def fake_bench_group(family, size, frames, configs, **kw):
        calls.append((family, kw["compile"], kw["linear"], tuple(configs)))
        spread = {n: {"q25": 1.0, "q75": 1.0, "median": 1.0} for n in
                  ("full", "pruned", "kr1", "speedup_paired", "overhead_paired")}
        return [dict(family=family, size=size, frames=frames, tokens=256, method=m, keep_rate=k, batch=kw["batch"],
                     device="cpu", device_name=here, threads=1, dtype="fp32", drop_loc=[3, 6, 9], mel=128,
                     num_classes=527, seed=0, omp_wait_policy="PASSIVE", linear=kw["linear"], compile=kw["compile"], ms_full=2.0,
                     ms_pruned=1.0, speedup=2.0, mac_ratio=2.0, efficiency=1.0, overhead_at_kr1=0.0,
                     first_call_s_full=3.0, first_call_s_pruned=3.0, load_before=0.0, load_after=0.0,
                     spread=spread) for m, k in configs]

    monkeypatch.setattr(G, "bench_group", fake_bench_group)
    out = tmp_path / "grid.csv"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")   # torch is loaded here: the policy it loaded with stands
    argv = ["--grid", "static", "--families", "ast", "--threads", "1", "--out", str(out), "--omp-wait", "passive"]
    G.main(argv)
    assert [(c[1], c[2]) for c in calls] == [("none", "onednn"), ("default", "default")]
    df = pd.read_csv(out)
    assert sorted(set(df["compile"])) == ["default", "none"] and len(df) == 2 * len(FIXED_BUDGET)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["compile"] == ["none", "default"] and meta["cpu_name"] and "compile" in meta["key_columns"]
    G.main(argv)                                       # resumes: nothing left to time
    assert len(calls) == 2 and len(pd.read_csv(out)) == 2 * len(FIXED_BUDGET)
    old = tmp_path / "old.csv"                         # rows from before the column: eager
    df.drop(columns="compile").to_csv(old, index=False)
    assert {k[-1] for k in G.done_keys(old)} == {"none"}
    df.assign(device_name="Another CPU").to_csv(out, index=False)   # another machine kind's rows: not this one's
    G.main(argv)
    assert len(calls) == 4 and set(pd.read_csv(out).device_name) == {"Another CPU", here}
    assert json.loads(out.with_suffix(".json").read_text())["runs"][-1]["device_name"] == here
    tokens = G.grid("cpu", "tokens", ["ast", "audiomae"])
    assert {(g["tokens"], g["batch"], tuple(g["configs"])) for g in tokens} == {
        (64, 1, (("topk", 0.5),)), (256, 1, (("topk", 0.5),))} and len(tokens) == 4
