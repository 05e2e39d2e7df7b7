"""Multi-label sets: AP / mAP on hand-made scores, the metadata.csv `labels` and AudioSet layouts (bad rows named by
file and line), multi-hot caching, BCE training on generated two-source mixtures, and the command line."""
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import MIX_SOURCES, make_mixtures, mixture, write_tone
from tprune_core import analysis, experiments, targets
from tprune_core import train as T
from tprune_core.cache import load_features
from tprune_core.cli import main
from tprune_core.datasets import find_datasets, load_dataset
from tprune_core.errors import DatasetError
from tprune_core.evaluation import evaluate
from tprune_core.models import create_model
from tprune_core.runtime import run_dir_for


def quiet(name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(name, **kw)


# ------------------------------------------------------------------ average precision and mAP

def test_average_precision_of_a_hand_computed_ranking():
    # ranked: + - + - + ; precision at the positives 1/1, 2/3, 3/5
    ap = targets.average_precision([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1])
    assert ap == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert targets.average_precision([0.1, 0.4, 0.2], [0, 1, 0]) == 1.0          # perfect ranking
    assert targets.average_precision([3, 2, 1], [0, 0, 1]) == pytest.approx(1 / 3)  # worst ranking
    assert math.isnan(targets.average_precision([0.3, 0.2], [0, 0]))              # no positive: undefined


def test_tied_scores_enter_together():
    # the positive shares its score with two negatives: precision is taken after the whole tie (1/3), not 1/1
    assert targets.average_precision([0.5, 0.5, 0.5, 0.1], [0, 1, 0, 0]) == pytest.approx(1 / 3)
    # ranked: {+, -} tied, then +: precision 1/2 for the first positive, 2/3 for the second
    assert targets.average_precision([0.8, 0.8, 0.3], [1, 0, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert targets.average_precision([1.0, 1.0, 1.0], [1, 1, 0]) == pytest.approx(2 / 3)  # all tied: the share


def test_map_skips_classes_without_a_positive_and_perfect_scores_give_one():
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    assert targets.mean_average_precision(y * 5 - 1, y) == (1.0, 2)     # class 2 has no positive: not scored
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.2, 0.6, 0.3], [0.1, 0.2, 0.9]])
    ap0 = targets.average_precision(scores[:, 0], y[:, 0])              # + - + -: (1 + 2/3) / 2
    ap1 = targets.average_precision(scores[:, 1], y[:, 1])              # + + - -: 1
    assert ap0 == pytest.approx(5 / 6) and ap1 == 1.0
    assert targets.mean_average_precision(scores, y) == (pytest.approx((5 / 6 + 1) / 2), 2)
    m, n = targets.mean_average_precision(scores, torch.zeros(4, 3))
    assert math.isnan(m) and n == 0


def test_average_precision_matches_sklearn_with_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(100):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, n) / 5 if trial % 2 else rng.standard_normal(n)   # many ties, then none
        truth = rng.integers(0, 2, n)
        if truth.any():
            assert targets.average_precision(scores, truth) == pytest.approx(
                sklearn.average_precision_score(truth, scores), abs=1e-12)
    s, y = rng.standard_normal((50, 6)), (rng.random((50, 6)) < 0.3).astype(float)
    y[:, 4] = 0                                                          # sklearn's macro mean would include it
    kept = [c for c in range(6) if y[:, c].any()]
    ref = np.mean([sklearn.average_precision_score(y[:, c], s[:, c]) for c in kept])
    assert targets.mean_average_precision(torch.tensor(s), torch.tensor(y)) == (pytest.approx(ref), 5)


def test_multi_hot_loss_and_hits():
    y = targets.multi_hot([(0, 2), (1,), ()], 3)
    assert y.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]] and y.dtype == torch.float32
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, 0.2], [1.0, 0.0, 0.0]])
    assert targets.hits(logits, y) == 2                      # arg-max 0 in {0, 2}, 1 in {1}, 0 not in {}
    assert targets.hits(logits, torch.tensor([0, 2, 0])) == 2
    assert targets.criterion(y) is targets.multilabel_loss and targets.criterion(torch.tensor([0, 1])) is F.cross_entropy
    by_hand = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).mean()
    assert targets.multilabel_loss(logits, y) == pytest.approx(by_hand.item())
    smoothed = y * 0.9 + 0.05
    assert targets.multilabel_loss(logits, y, label_smoothing=0.1) == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, smoothed).item())
    with pytest.raises(Exception, match="0..2"):
        targets.multi_hot([(3,)], 3)


# ------------------------------------------------------------------ the metadata.csv `labels` layout

def test_multilabel_folder_loads_with_its_class_index(tmp_path):
    folder = make_mixtures(tmp_path, per_pair=6, index="classes")
    sets = {s: quiet(str(folder), split=s) for s in ("train", "val", "test")}
    train = sets["train"]
    assert train.layout == "multilabel" and train.multilabel and train.classes == list(MIX_SOURCES)
    assert (len(sets["train"]), len(sets["val"]), len(sets["test"])) == (24, 6, 6)     # the split column
    first = train[0]
    assert first.clip_id == "clips/0_0.wav" and first.labels == (0, 1) and first.label in first.labels
    assert train.class_counts() == {n: 12 for n in MIX_SOURCES}
    assert "multi-label, 2.00 per clip" in train.describe() and "class_index=classes.csv" in train.describe()


def test_without_an_index_classes_are_the_sorted_names_and_splits_are_drawn(tmp_path):
    folder = make_mixtures(tmp_path, per_pair=6, columns=None)
    with pytest.warns(UserWarning, match="clip by clip"):
        train = load_dataset(str(folder), split="train")
    assert train.classes == sorted(MIX_SOURCES)
    grouped = make_mixtures(tmp_path, name="grouped", per_pair=6, columns="group")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # drawn by group: no warning
        splits = {s: load_dataset(str(grouped), split=s) for s in ("train", "val", "test")}
    groups = [{c.group for c in cs} for cs in splits.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(cs) for cs in splits.values()) == 36 and all(len(cs) for cs in splits.values())


def test_audioset_class_index_accepts_mids_and_display_names(tmp_path):
    folder = make_mixtures(tmp_path, per_pair=6)
    (folder / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/lt,low_tone\n1,/m/ht,"high tone, bright"\n2,/m/ln,low_noise\n'
        '3,/m/hn,high_noise\n4,/m/x,"Unused, never labelled"\n')
    meta = (folder / "metadata.csv").read_text().replace("high_tone", "/m/ht")
    (folder / "metadata.csv").write_text(meta)
    with pytest.warns(UserWarning, match="no clip of 1 class"):
        train = load_dataset(str(folder), split="train")
    assert train.classes == ["low_tone", "high tone, bright", "low_noise", "high_noise", "Unused, never labelled"]
    assert train[0].labels == (0, 1)


@pytest.mark.parametrize("line, index, match", [
    ("clips/0_0.wav,low_tone;purple,train", "classes", r"metadata.csv, line 3: labels \['purple'\] are not in "
                                                       r"classes.csv"),
    ("clips/0_0.wav, ; ,train", None, r"metadata.csv, line 3: labels=.*expected at least one class name"),
    ("clips/0_0.wav,,train", None, r"metadata.csv, line 3: file='clips/0_0.wav', labels=''; expected both"),
    ("clips/nowhere.wav,low_tone,train", None, r"1 file listed in .*metadata.csv is missing: .*nowhere.wav"),
    ("clips/0_0.wav,low_tone,train", None, r"metadata.csv, line 3: clips/0_0.wav is listed twice"),
])
def test_bad_label_rows_name_file_and_line(tmp_path, line, index, match):
    folder = make_mixtures(tmp_path, per_pair=2, index=index)
    rows = (folder / "metadata.csv").read_text().splitlines()
    rows.insert(2, line)                                     # becomes line 3 of the file
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=match):
        quiet(str(folder))


@pytest.mark.parametrize("text, match", [
    ("index,name\n0,low_tone\nx,high_tone\n", r"classes.csv, line 3: index='x'"),
    ("index,name\n0,low_tone\n1,low_tone\n", r"classes.csv, line 3: index 1 or name 'low_tone' is listed twice"),
    ("index,name\n0,low_tone\n2,high_tone\n", r"classes.csv: indices \[0, 2\].*are not 0..1"),
    ("id,name\n0,low_tone\n", r"classes.csv: missing columns \['index'\]"),
])
def test_bad_class_index_rows_name_file_and_line(tmp_path, text, match):
    folder = make_mixtures(tmp_path, per_pair=2)
    (folder / "classes.csv").write_text(text)
    with pytest.raises(DatasetError, match=match):
        quiet(str(folder))


# ------------------------------------------------------------------ AudioSet's own files

SEGMENT_HEAD = ("# Segments csv created Sun Mar  5 10:54:25 2017\n"
                "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=6\n"
                "# YTID, start_seconds, end_seconds, positive_labels\n")
AS_INDEX = ('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n'
            '2,/m/0jbk,"Male speech, man speaking"\n')


def make_audioset(root, missing="gone_seg_1"):
    """An AudioSet folder: class_labels_indices.csv, balanced_train (10) and eval (4) segment lists, audio files
    named in each accepted convention under audio/; ``missing`` is listed but has no file."""
    folder = root / "as20k"
    (folder / "audio" / "eval").mkdir(parents=True)
    labels = ['"/m/09x0r"', '"/m/04rlf,/m/09x0r"', '"/m/0jbk,/m/09x0r"', '"/m/04rlf"']
    names = ["{y}.wav", "Y{y}.flac", "{y}_30.000.wav", "{y}_30_40.wav", "Y{y}_30.000_40.000.wav"]
    lines = {"train": [], "eval": []}
    for k in range(14):
        part = "eval" if k >= 10 else "train"
        ytid = f"-{part[:2]}{k:02d}_Xy{k}"        # YouTube ids hold '-' and '_'
        lines[part].append(f"{ytid}, 30.000, 40.000, {labels[k % 4]}")
        sub = "audio/eval" if part == "eval" else "audio"
        write_tone(folder / sub / names[k % 5].format(y=ytid), seconds=0.3, freq=300 + 100 * (k % 4))
    lines["train"].append(f"{missing}, 0.000, 10.000, \"/m/04rlf\"")
    (folder / "class_labels_indices.csv").write_text(AS_INDEX)
    (folder / "balanced_train_segments.csv").write_text(SEGMENT_HEAD + "\n".join(lines["train"]) + "\n")
    (folder / "eval_segments.csv").write_text(SEGMENT_HEAD + "\n".join(lines["eval"]) + "\n")
    return folder


def test_audioset_segment_lists_map_youtube_ids_to_files(tmp_path):
    folder = make_audioset(tmp_path)
    with pytest.warns(UserWarning, match=r"1 of 15 segments .* has no audio file .*is left out.*gone_seg_1"):
        train = load_dataset(str(folder), split="train")
    sets = {s: quiet(str(folder), split=s) for s in ("val", "test")}
    assert train.layout == "audioset" and train.classes == ["Speech", "Music", "Male speech, man speaking"]
    assert len(train) + len(sets["val"]) == 10 and len(sets["test"]) == 4 and len(sets["val"]) >= 1
    assert {c.clip_id for c in sets["test"]} == {f"-ev{k:02d}_Xy{k}" for k in range(10, 14)}
    by_id = {c.clip_id: c for s in (train, sets["val"], sets["test"]) for c in s}
    assert by_id["-tr00_Xy0"].labels == (0,) and by_id["-tr01_Xy1"].labels == (0, 1)
    assert by_id["-tr02_Xy2"].labels == (0, 2) and by_id["-tr02_Xy2"].label == 2          # the rarer class
    assert by_id["-tr01_Xy1"].path.endswith("Y-tr01_Xy1.flac") and by_id["-ev13_Xy13"].path.endswith("_30_40.wav")
    assert by_id["-tr03_Xy3"].path.endswith("_30_40.wav") and by_id["-tr04_Xy4"].path.endswith("_40.000.wav")
    assert train.protocol["missing"] == 1 and train.protocol["lists"] == ["balanced_train_segments.csv",
                                                                         "eval_segments.csv"]


@pytest.mark.parametrize("line, match", [
    ("abc, 30.000, 40.000", r"balanced_train_segments.csv, line 5: 3 fields"),
    ('abc, 40.000, 30.000, "/m/09x0r"', r"balanced_train_segments.csv, line 5: YTID='abc', start='40.000'"),
    ('abc, 30.000, 40.000, "/m/nope"', r"balanced_train_segments.csv, line 5: labels \['/m/nope'\] are not in "
                                       r"class_labels_indices.csv"),
    ('-tr00_Xy0, 30.000, 40.000, "/m/09x0r"', r"balanced_train_segments.csv, line 5: segment -tr00_Xy0 is also "
                                              r"at balanced_train_segments.csv, line 4"),
])
def test_bad_segment_lines_name_file_and_line(tmp_path, line, match):
    folder = make_audioset(tmp_path)
    path = folder / "balanced_train_segments.csv"
    rows = path.read_text().splitlines()
    rows.insert(4, line)                                     # after 3 comment lines and the first segment
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=match):
        quiet(str(folder))


# ------------------------------------------------------------------ multi-hot features in the cache

def test_cache_stores_multi_hot_targets_keyed_by_the_labels(tmp_cache, tmp_path):
    folder = make_mixtures(tmp_path, per_pair=6, index="classes")
    first = load_features(str(folder), "test", progress=False)
    assert first.y.shape == (6, 4) and first.y.dtype == torch.float32
    assert first.y.sum(1).tolist() == [2.0] * 6 and first.y[0].tolist() == [1, 1, 0, 0]
    again = load_features(str(folder), "test", progress=False)
    assert again.from_cache and torch.equal(again.y, first.y) and again.path == first.path
    meta = folder / "metadata.csv"
    meta.write_text(meta.read_text().replace("clips/0_5.wav,low_tone;high_tone", "clips/0_5.wav,low_tone"))
    relabelled = load_features(str(folder), "test", progress=False)       # only a label changed: a new key
    assert not relabelled.from_cache and relabelled.path != first.path and relabelled.y[0].tolist() == [1, 0, 0, 0]
    index = folder / "classes.csv"
    index.write_text(index.read_text() + "4,silence\n")                   # a fifth class widens the targets
    with pytest.warns(UserWarning, match="no clip of 1 class"):
        wider = load_features(str(folder), "test", progress=False)
    assert not wider.from_cache and wider.y.shape == (6, 5)


# ------------------------------------------------------------------ training and evaluation

def test_bce_training_on_two_source_mixtures_beats_chance(tmp_cache, tmp_path, one_thread):
    """Each clip sums two of four distinct sources, labelled with both: chance mAP is the label density (0.5); a
    tiny AST trained 36 steps with the per-class sigmoid loss finds both sources of a clip."""
    folder = make_mixtures(tmp_path, per_pair=12, index="classes")
    train, val, test = (load_features(str(folder), s, progress=False) for s in ("train", "val", "test"))
    cfg = T.TrainConfig(family="ast", dataset=str(folder), frames=48, epochs=6, batch_size=8, lr=3e-4,
                        warmup_epochs=0.5, threads=1, progress=False, drop_path=0.0, freq_mask=0, time_mask=0,
                        label_smoothing=0.0)
    torch.manual_seed(0)
    chance = evaluate(create_model("ast", "tiny", 48, 4), test)["mAP"]
    summary = T.fit(cfg, train, val, run_dir_for(cfg))
    assert summary["steps"] == 36 and "val_mAP" in summary and all("val_mAP" in h for h in summary["history"])
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < 0.6 * losses[0], losses
    best = max(summary["history"], key=lambda h: h["val_mAP"])      # selection on mAP
    assert summary["best_epoch"] == best["epoch"] and summary["val_mAP"] == best["val_mAP"]
    model, _ = T.load_checkpoint(run_dir_for(cfg))
    result = evaluate(model, test)
    assert result["metric"] == "mAP" and result["n_scored_classes"] == 4 and result["n_clips"] == 12
    assert result["mAP"] > 0.9 and result["mAP"] > chance + 0.2, (result, chance)
    assert result["accuracy"] >= 0.9                                  # top-1 hit rate
    with torch.no_grad():
        top2 = model(test.x).topk(2, dim=1).indices.sort(1).values
    pairs = test.y.nonzero()[:, 1].view(-1, 2)
    assert (top2 == pairs).all(1).float().mean() >= 0.75             # both sources of most clips


def test_single_label_results_carry_no_new_fields():
    from conftest import toy_set
    result = evaluate(create_model("ast", "tiny", 32, 3), toy_set(6, 0))
    assert "metric" not in result and "mAP" not in result and targets.headline(result) == "accuracy"
    assert targets.score_fields(result) == {} and targets.score_fields(result, "val_") == {}


def test_headline_metric_of_grids():
    single = pd.DataFrame({"accuracy": [0.5, 0.6]})
    multi = pd.DataFrame({"accuracy": [0.5, 0.6], "metric": ["mAP", "mAP"], "mAP": [0.7, 0.8]})
    assert analysis.headline_metric(single) == "accuracy" and analysis.headline_metric(multi) == "mAP"
    assert analysis.headline_metric(pd.concat([single, multi])) == "accuracy"   # mixed: the shared column


# ------------------------------------------------------------------ the command line

def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_data_list_and_check_show_multilabel_folders(capsys, tmp_cache, tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_mixtures(root, per_pair=6, index="classes")
    make_audioset(root)
    monkeypatch.setenv("TPRUNE_DATA", str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = {e["name"]: e for e in find_datasets()}
    assert entries["mixtures"]["layout"] == "multilabel" and entries["mixtures"]["clips"] == 36
    assert entries["as20k"]["layout"] == "audioset" and entries["as20k"]["splits"]["test"] == 4
    code, out, _ = run(capsys, "data", "list")
    assert code == 0 and "mixtures" in out and "multilabel" in out and "as20k" in out and "audioset" in out
    assert "labels separated by ';'" in out
    code, out, _ = run(capsys, "data", "check", "mixtures")
    assert code == 0 and "read 36 of 36 files" in out and "multi-label, 2.00 per clip" in out


def test_train_eval_and_grid_on_a_multilabel_folder(capsys, tmp_cache, tmp_path, one_thread):
    folder = make_mixtures(tmp_path, per_pair=6, index="classes")
    code, out, _ = run(capsys, "train", "--dataset", str(folder), "--frames", "48", "--epochs", "1",
                       "--batch-size", "8", "--threads", "1", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["classes"] == list(MIX_SOURCES) and 0 <= summary["val_mAP"] <= 1
    assert summary["test"]["metric"] == "mAP" and summary["test"]["n_clips"] == 6
    code, out, _ = run(capsys, "eval", "--checkpoint", summary["hash"], "--method", "topk", "--keep-rate", "0.5",
                       "--json")
    result = json.loads(out)
    assert code == 0 and result["metric"] == "mAP" and 0 <= result["mAP"] <= 1 and result["keep_rate"] == 0.5
    code, out, _ = run(capsys, "eval", "--checkpoint", summary["hash"])
    assert code == 0 and ", mAP " in out
    # the chapters' path: a zoo-style entry of this run through the cached evaluation grid
    run_dir = tmp_cache / "zoo" / summary["hash"]
    entry = {"role": "base", "run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"), "family": "ast",
             "dataset": str(folder), "seed": 0, "config": summary["config"]}
    grid = experiments.evaluate_grid([entry], [experiments.setting("topk", kr) for kr in (1.0, 0.5)], progress=False)
    assert grid.metric.tolist() == ["mAP", "mAP"] and grid.mAP.between(0, 1).all()
    assert analysis.headline_metric(grid) == "mAP"
    assert grid.mAP.iloc[1] == pytest.approx(result["mAP"])            # the same setting as `tprune eval` above


def test_mixture_sources_are_distinct():
    """The generator the tests rely on: each source puts its energy in its own band."""
    spectra = [np.abs(np.fft.rfft(mixture([s], seed=1))) for s in MIX_SOURCES]
    peaks = [int(np.argmax(sp)) * 2 for sp in spectra]           # 0.5 s: 2 Hz per bin
    assert peaks[0] == pytest.approx(400, abs=4) and peaks[1] == pytest.approx(2500, abs=4)
    assert 800 <= peaks[2] <= 1400 and 4500 <= peaks[3] <= 6500
