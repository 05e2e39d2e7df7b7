"""The model release (zoo/<profile>/): pack built runs, verify digests, find released models without training."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tprune_core import release, zoo
from tprune_core.training import build
from tprune_core.release import ReleaseError

pytestmark = pytest.mark.slow
ROLES = ("mae", "base")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The smoke profile's MAE and base models, trained once and packed into a private release folder."""
    root = tmp_path_factory.mktemp("release")
    mp = pytest.MonkeyPatch()
    mp.setenv("TPRUNE_CACHE", str(root / "cache"))
    mp.setenv("TPRUNE_RELEASE", str(root / "zoo"))
    build.build_zoo("smoke", progress=False, report=False, roles=ROLES)
    fp32 = {e["hash"]: e for e in zoo.zoo_entries("smoke", roles=ROLES)}
    added = build.pack_release("smoke", progress=False)
    yield {"root": root, "added": added, "fp32": fp32}
    mp.undo()


@pytest.fixture
def env(packed, monkeypatch, tmp_path):
    """The packed release with a fresh, empty zoo cache: a reader's machine."""
    monkeypatch.setenv("TPRUNE_RELEASE", str(packed["root"] / "zoo"))
    monkeypatch.setenv("TPRUNE_CACHE", str(tmp_path / "cache"))
    return packed


def test_pack_writes_fp16_safetensors_and_a_complete_manifest(env):
    plan = [(r, c) for r, c in zoo.zoo_plan("smoke") if r in ROLES]
    manifest = release.read_manifest("smoke")
    assert [r["hash"] for r in manifest["models"]] == [c.hash() for _, c in plan]   # MAE first, then the bases
    folder = release.release_dir("smoke")
    for r in manifest["models"]:
        path = folder / r["file"]
        assert release.sha256_file(path) == r["sha256"] and path.stat().st_size == r["bytes"]
        state = load_file(str(path))
        assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
        assert r["params"] == sum(t.numel() for t in state.values())
        assert r["torch"] == torch.__version__ and r["training"]["machine"]["processor"]
        assert r["training"]["code_version"] and r["training"]["train_seconds"] > 0
        if r["role"] == "base":
            for key in ("family", "dataset", "seed", "config", "parents", "classes", "val_accuracy",
                        "test_accuracy", "val_accuracy_fp32", "test_accuracy_fp32"):
                assert key in r, key
            assert r["test_accuracy_fp32"] == env["fp32"][r["hash"]]["test_accuracy"]
            # fp16 rounding moves a tiny model's accuracy by at most a few clips
            assert abs(r["test_accuracy"] - r["test_accuracy_fp32"]) <= 0.05
            if r["family"] == "audiomae":
                assert r["parents"] == [r["config"]["init"]] and r["config"]["init"].startswith("mae:")


def test_a_reader_finds_every_released_model_without_training(env, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("a released model was trained again")
    monkeypatch.setattr(build, "_train_one", no_training)
    monkeypatch.setattr(build, "_train_parallel", no_training)
    entries = build.build_zoo("smoke", progress=False, report=False, roles=ROLES)
    records = release.released("smoke")
    assert {e["hash"] for e in entries} == set(records) and all(e["trained"] for e in entries)
    for e in entries:
        if e["role"] == "base":
            assert e["test_accuracy"] == records[e["hash"]]["test_accuracy"]       # the fp16 weights' figure
    digests = zoo.provenance(entries)["checkpoints"]
    assert digests == {e["name"]: records[e["hash"]]["sha256"] for e in entries if e["role"] == "base"}


def test_materialized_runs_hold_the_released_weights(env):
    release.materialize("smoke")
    for h, r in release.released("smoke").items():
        if r["role"] != "base":
            continue
        model, _ = zoo.load_checkpoint(zoo.zoo_root() / h)
        direct = release.build_released(r, "smoke")
        x = torch.randn(2, r["config"]["frames"], 128)
        with torch.no_grad():
            assert torch.equal(model(x), direct(x))


def test_a_local_run_of_the_same_hash_gives_way_to_the_release(env):
    release.materialize("smoke")
    h = next(h for h, r in release.released("smoke").items() if r["role"] == "base")
    run_dir = zoo.zoo_root() / h
    (run_dir / release.MARKER).unlink()          # as if trained here: no marker
    ck = torch.load(run_dir / "best.pt", weights_only=False)
    ck["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, run_dir / "best.pt")
    assert release.materialize("smoke") == [h]
    assert release.released_digest(run_dir) == release.released("smoke")[h]["sha256"]


def test_verify_passes_and_names_a_changed_file(env, tmp_path, monkeypatch):
    assert len(release.verify("smoke")) == len(release.released("smoke"))
    import shutil
    copy = tmp_path / "zoo"
    shutil.copytree(env["root"] / "zoo", copy)
    monkeypatch.setenv("TPRUNE_RELEASE", str(copy))
    victim = copy / "smoke" / release.read_manifest("smoke")["models"][2]["file"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=victim.name):
        release.verify("smoke")
    with pytest.raises(ReleaseError, match=victim.name):      # the zoo refuses too: no silent retrain
        zoo.zoo_entries("smoke", roles=ROLES)
    victim.unlink()
    with pytest.raises(ReleaseError, match="missing"):
        release.verify("smoke", load=False)


def test_pack_keeps_one_release_and_drops_what_the_plan_no_longer_has(env, tmp_path, monkeypatch):
    import shutil
    copy = tmp_path / "zoo"
    shutil.copytree(env["root"] / "zoo", copy)
    monkeypatch.setenv("TPRUNE_RELEASE", str(copy))
    monkeypatch.setenv("TPRUNE_CACHE", str(env["root"] / "cache"))   # where the smoke runs were trained
    folder = copy / "smoke"
    manifest = json.loads((folder / "manifest.json").read_text())
    old = dict(manifest["models"][1], hash="0ldrecipe000", file="ast-synthetic-s9-0ldrecipe000.safetensors")
    (folder / old["file"]).write_bytes(b"old weights")
    manifest["models"].append(old)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert build.pack_release("smoke", progress=False) == []              # everything built is packed already
    assert "0ldrecipe000" not in release.released("smoke") and not (folder / old["file"]).exists()
    (folder / "stray.bin").write_bytes(b"x")
    with pytest.raises(ReleaseError, match="stray.bin"):
        release.verify("smoke", load=False)


def test_weights_and_audio_live_in_the_release_folder_only():
    """The repository holds weights only under zoo/ (safetensors, at most ~200 MB in all) and no audio at all."""
    import subprocess
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    weights = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".npz", ".onnx")
    audio = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".opus")
    assert [f for f in tracked if f.endswith(weights) and not f.startswith("zoo/")] == []
    assert [f for f in tracked if f.lower().endswith(audio)] == []
    assert all(f.endswith((".safetensors", "/manifest.json")) for f in tracked if f.startswith("zoo/"))
    released = [f for f in tracked if f.startswith("zoo/") and f.endswith(".safetensors")]
    assert sum((repo / f).stat().st_size for f in released) <= 200e6


def test_the_committed_release_matches_its_manifest(monkeypatch, data_root):
    """What `tprune zoo verify` checks, for the release in this checkout (digests only: loading is tested above);
    the run hashes need the real data (the pooled speech protocol enters them)."""
    from tprune_core.results import repo_root
    monkeypatch.delenv("TPRUNE_RELEASE", raising=False)   # the module's private release may still be set
    if not (repo_root() / "zoo" / "full" / "manifest.json").is_file():
        pytest.fail("expected the release zoo/full/manifest.json in the checkout")
    records = release.verify("full", load=False)
    plan = {cfg.hash() for role, cfg in zoo.zoo_plan("full") if role in release.RELEASED_ROLES}
    assert {r["hash"] for r in records} <= plan   # nothing from an older recipe


def test_a_release_name_gives_a_training_start(env):
    """`tprune train --pretrained release:NAME`: the MAE for AudioMAE-style models, a released classifier of the
    same family for AST-style ones; a wrong family or name is refused, naming what is released."""
    mae = release.resolve("mae", "smoke")
    assert release.init_from_release("mae", "audiomae", "smoke") == "mae:" + mae["hash"]
    assert (zoo.zoo_root() / mae["hash"] / "encoder.pt").is_file()
    ast = release.resolve("ast/synthetic/s1", "smoke")
    assert ast["seed"] == 1 and release.init_from_release("ast/synthetic/s1", "ast", "smoke") == "transfer:" + ast["hash"]
    with pytest.raises(ReleaseError, match="needs release:mae"):
        release.init_from_release("ast/synthetic/s1", "audiomae", "smoke")
    with pytest.raises(ReleaseError, match=r"released: mae, .*ast/synthetic/s0"):
        release.resolve("ast/birds/s0", "smoke")


def test_zoo_verify_and_list_on_the_command_line(env, capsys, tmp_path, monkeypatch):
    from tprune_core.cli import main
    assert main(["zoo", "verify", "--profile", "smoke"]) == 0
    assert "every sha256 matches" in capsys.readouterr().out
    assert main(["zoo", "--list", "--profile", "smoke", "--roles", "mae,base"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sum(" released " in line for line in listed) == len(release.released("smoke"))
    assert any(" missing " in line and " prune " in line for line in listed)   # derived models: not released
    import shutil
    copy = tmp_path / "zoo"
    shutil.copytree(env["root"] / "zoo", copy)
    monkeypatch.setenv("TPRUNE_RELEASE", str(copy))
    victim = copy / "smoke" / release.read_manifest("smoke")["models"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    assert main(["zoo", "verify", "--profile", "smoke"]) == 2
    assert victim.name in capsys.readouterr().err
    assert main(["zoo", "--roles", "mae,typo"]) == 2 and "--roles: typo" in capsys.readouterr().err


def test_a_materialized_run_missing_its_weights_is_written_again(env):
    release.materialize("smoke")
    h = next(h for h, r in release.released("smoke").items() if r["role"] == "base")
    (zoo.zoo_root() / h / "best.pt").unlink()
    assert release.materialize("smoke") == [h] and (zoo.zoo_root() / h / "best.pt").is_file()


def test_released_digests_need_no_audio(env, monkeypatch, tmp_path):
    """The reader's build checks stored tables against the release without any audio: the names and digests come
    from the manifest, whatever TPRUNE_DATA points at."""
    with_data = zoo.released_digests("smoke")
    monkeypatch.setenv("TPRUNE_DATA", str(tmp_path / "no-audio-here"))
    without = zoo.released_digests("smoke")
    assert without == with_data
    names = {e["name"]: e for e in zoo.zoo_entries("smoke", roles=("base",))}
    assert set(without) == set(names)
    assert all(without[n] == zoo.weights_sha256(names[n]) for n in names)
