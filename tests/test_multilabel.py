"""Multi-label classification: data forms and checks, iterative stratification, metrics, thresholds, and a
multi-label checkpoint through train, predict, evaluate, inspect and optimize."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import GOEMOTIONS
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

from bertcls.config.settings import DataSection
from bertcls.data.labelled import DataReport, check_labelled, resolve_conflicting_labels
from bertcls.data.labelsets import iterative_stratification, label_matrix, label_sets, names_of, split_label_sets
from bertcls.model.checkpoint import load_checkpoint
from bertcls.runtime.errors import DataError
from bertcls.task import DecisionRule, MultiLabel
from bertcls.task.calibration import binary_nll
from bertcls.task.metrics import label_set_scores, per_label_scores, tune_thresholds

MULTI_LABEL = MultiLabel()


def decide(probs, thresholds, min_labels=0):
    return MULTI_LABEL.decide(probs, DecisionRule(thresholds=tuple(thresholds), min_labels=min_labels))


KEEP = ["admiration", "amusement", "anger", "curiosity", "gratitude", "love", "neutral", "sadness"]


def goemotions_subset(rows: int = 480) -> pd.DataFrame:
    """Dev rows whose labels are all among KEEP: every multi-label row first, then single-label rows."""
    frame = pd.read_csv(GOEMOTIONS, dtype=str, keep_default_na=False)
    frame = frame[(frame.split == "dev") & frame.labels.map(lambda x: set(x.split("|")) <= set(KEEP))]
    frame = frame.drop_duplicates(subset=["text"])
    multi = frame[frame.labels.str.contains("|", regex=False)].head(rows // 4)
    single = frame[~frame.labels.str.contains("|", regex=False)].head(rows - len(multi))
    return pd.concat([multi, single])[["text", "labels"]].reset_index(drop=True)


def as_flag_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The same data in the Jigsaw layout: one 0/1 column per label."""
    flags = {label: frame.labels.map(lambda x, label=label: "1" if label in x.split("|") else "0") for label in KEEP}
    return pd.DataFrame({"text": frame.text, **flags})


# --- data -------------------------------------------------------------------------------------------------------


def test_both_input_forms_and_the_separator_read_the_same_label_sets():
    separated = pd.DataFrame({"text": ["a", "b", "c", "d"], "category": ["x|y", "", " y ", "z||x"]})
    flags = pd.DataFrame({"text": list("abcd"), "x": ["1", "0", "0", "1"], "y": ["1", "0", "1", "0"],
                          "z": ["0", "0", "0", "1"]})  # fmt: skip
    one = DataSection()
    many = DataSection(label_columns=["x", "y", "z"])
    assert label_sets(separated, one) == [("x", "y"), (), ("y",), ("x", "z")]
    assert label_sets(flags, many) == label_sets(separated, one)
    assert names_of(separated, one) == names_of(flags, many) == ["x", "y", "z"]
    np.testing.assert_array_equal(
        label_matrix(separated, one, ["x", "y", "z"]), label_matrix(flags, many, ["x", "y", "z"])
    )
    other = DataSection(label_separator=";")
    assert label_sets(pd.DataFrame({"text": ["a"], "category": ["x;y|z"]}), other) == [("x", "y|z")]


def test_iterative_stratification_keeps_every_label_with_three_texts_in_every_split():
    rng = np.random.default_rng(0)
    for seed in range(5):
        rows = 400
        matrix = (rng.random((rows, 30)) < np.geomspace(0.3, 0.004, 30)).astype(np.float32)
        part = iterative_stratification(matrix, [0.8, 0.1, 0.1], seed)
        assert set(part) == {0, 1, 2}
        for label in np.flatnonzero(matrix.sum(axis=0) >= 3):
            present = np.unique(part[matrix[:, label] > 0])
            assert set(present) == {0, 1, 2}, f"label {label} ({int(matrix[:, label].sum())} texts) misses a split"
        sizes = np.bincount(part, minlength=3) / rows
        assert abs(sizes[1] - 0.1) < 0.04 and abs(sizes[2] - 0.1) < 0.04


def test_split_keeps_identical_texts_together_and_every_label_in_every_split():
    frame = goemotions_subset(300)
    frame = pd.concat([frame, frame.head(20)], ignore_index=True)  # 20 texts twice
    cfg = DataSection(label_column="labels")
    parts = split_label_sets(frame, cfg, seed=3)
    texts = {name: set(part.text) for name, part in parts.items()}
    assert (
        not (texts["train"] & texts["val"])
        and not (texts["train"] & texts["test"])
        and not (texts["val"] & texts["test"])
    )
    assert sum(len(p) for p in parts.values()) == len(frame)
    for name, part in parts.items():
        assert set(names_of(part, cfg)) == set(KEEP), name


# --- metrics and thresholds -------------------------------------------------------------------------------------


def test_every_multilabel_metric_equals_scikit_learn():
    rng = np.random.default_rng(1)
    truth = (rng.random((60, 5)) < 0.3).astype(int)
    given = (rng.random((60, 5)) < 0.3).astype(bool)
    ours = label_set_scores(truth, given)
    assert ours["f1"] == pytest.approx(f1_score(truth, given, average="macro", zero_division=0))
    assert ours["micro_f1"] == pytest.approx(f1_score(truth, given, average="micro", zero_division=0))
    assert ours["samples_f1"] == pytest.approx(f1_score(truth, given, average="samples", zero_division=0))
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, given))
    assert ours["hamming_loss"] == pytest.approx(hamming_loss(truth, given))
    p, r, f, s = precision_recall_fscore_support(truth, given, zero_division=0)
    per_label = per_label_scores(truth, given)
    for ours_values, theirs in zip(("precision", "recall", "f1", "support"), (p, r, f, s), strict=True):
        np.testing.assert_allclose(per_label[ours_values], theirs)


def test_tuned_thresholds_give_each_label_its_best_f1():
    rng = np.random.default_rng(2)
    truth = (rng.random((80, 4)) < 0.25).astype(float)
    probs = np.clip(truth * 0.3 + rng.random((80, 4)) * 0.7, 0, 1)
    probs[:10, 0] = 0.5  # ties
    thresholds = tune_thresholds(probs, truth)
    for k in range(4):
        best = max(f1_score(truth[:, k], probs[:, k] >= c, zero_division=0) for c in np.unique(probs[:, k]))
        assert f1_score(truth[:, k], probs[:, k] >= thresholds[k], zero_division=0) == pytest.approx(best)
    assert tune_thresholds(probs, np.zeros_like(truth))[0] == 0.5  # no positives: the default
    high = np.float32(0.99)
    low = np.nextafter(high, np.float32(0))  # adjacent float32 values: their midpoint must still split them
    close = np.array([[high], [low], [low], [0.1]], dtype=np.float32)
    cut = tune_thresholds(close, np.array([[1.0], [0.0], [0.0], [0.0]]))
    np.testing.assert_array_equal(decide(close, cut)[:, 0], [True, False, False, False])


def test_min_labels_gives_the_most_probable_label_when_none_passes():
    probs = np.array([[0.1, 0.3], [0.9, 0.2], [0.2, 0.1]])
    np.testing.assert_array_equal(decide(probs, [0.5, 0.5]), [[False, False], [True, False], [False, False]])
    np.testing.assert_array_equal(decide(probs, [0.5, 0.5], 1), [[False, True], [True, False], [True, False]])


def test_balanced_becomes_each_labels_pos_weight_in_the_binary_cross_entropy():
    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)
    np.testing.assert_allclose(MULTI_LABEL.balanced_weights(labels, 2), [1 / 3, 3.0])
    logits = torch.tensor([[0.2, -0.3], [1.0, 0.5], [-0.4, 0.1], [0.3, -1.0]])
    weighted = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1 / 3, 3.0]))(logits, torch.from_numpy(labels))
    z, y, w = logits.numpy(), labels, np.array([1 / 3, 3.0])
    by_hand = -(w * y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z)))).mean()
    assert float(weighted) == pytest.approx(by_hand, rel=1e-5)
    assert float(weighted) != pytest.approx(binary_nll(z, y), rel=1e-3)


# --- bad input ----------------------------------------------------------------------------------------------------


def test_bad_multilabel_input_is_one_sentence_and_exit_2(cli, ml_data, tmp_path):
    frame = goemotions_subset()
    flags = as_flag_columns(frame)
    flags.to_csv("flags.csv", index=False)
    code, _, err = cli("train", "--data-file", "flags.csv", "--multi-label", "--label-columns", "admiration,joy")
    assert code == 2 and "no column 'joy'" in err and "Traceback" not in err
    bad = flags.copy()
    bad.loc[7, "anger"] = "2"
    bad.to_csv("bad.csv", index=False)
    code, _, err = cli("train", "--data-file", "bad.csv", "--multi-label", "--label-columns", ",".join(KEEP))
    assert code == 2 and "'anger' holds '2' on CSV line 9" in err
    frame.assign(labels=frame.labels.str.split("|").str[0]).to_csv("single.csv", index=False)
    code, _, err = cli("train", "--data-file", "single.csv", "--label-column", "labels", "--multi-label")
    assert code == 2 and "no cell of label column 'labels' holds the separator '|'" in err
    code, _, err = cli("train", "--data-file", str(ml_data), "--label-column", "labels", "--label-columns", "a,b")
    assert code == 2 and "--multi-label" in err
    code, _, err = cli("train", "--data-file", str(ml_data), "--metric", "micro_f1")
    assert code == 2 and "multi-label" in err
    conflict = pd.concat([frame, frame.head(1).assign(labels="anger")], ignore_index=True)
    conflict.to_csv("conflict.csv", index=False)
    code, _, err = cli("train", "--data-file", "conflict.csv", "--label-column", "labels", "--multi-label")
    assert code == 2 and "different label sets" in err and "--on-conflicting-labels drop or union" in err

    rare = pd.concat([frame, pd.DataFrame({"text": ["so proud", "proud of you"], "labels": ["pride|joy", "pride"]})])
    rare.to_csv("rare.csv", index=False)
    code, _, err = cli("train", "--data-file", "rare.csv", "--label-column", "labels", "--multi-label")
    assert code == 2 and "'joy' (1)" in err and "'pride' (2)" in err and "too few to split" in err


@pytest.mark.parametrize("layout", ["separated", "flags"])
def test_conflicting_label_sets_take_their_union_in_either_form(layout):
    """GoEmotions' dev rows hold "I like it!" twice as love and once as admiration."""
    texts = ["I like it!", "I like it!", "I like it!", "so sad", "lol", "lol", "meh"]
    cells = ["love", "love", "admiration", "sadness", "amusement|love", "amusement", ""]
    names = ["admiration", "amusement", "love", "sadness"]
    frame = pd.DataFrame({"text": texts, "labels": cells})
    cfg = DataSection(label_column="labels", on_conflicting_labels="union")
    if layout == "flags":
        flags = {name: ["1" if name in cell.split("|") else "0" for cell in cells] for name in names}
        frame = pd.DataFrame({"text": texts, **flags})
        cfg = DataSection(label_columns=names, on_conflicting_labels="union")
    merged = resolve_conflicting_labels(frame, cfg, "d.csv", report := DataReport(), MULTI_LABEL)
    assert label_sets(merged, cfg) == [("admiration", "love")] * 3 + [("sadness",)] + [("amusement", "love")] * 2 + [()]
    assert report.warnings == ["Gave 4 row(s) of 2 text(s) that appear with different label sets (e.g. 'I like it!') "
                               "the union of their text's label sets."]  # fmt: skip
    with pytest.raises(DataError, match="majority does not apply to multi-label data; use drop or union"):
        resolve_conflicting_labels(frame, cfg.model_copy(update={"on_conflicting_labels": "majority"}), "d.csv",
                                   DataReport(), MULTI_LABEL)  # fmt: skip


def test_cell_checks_run_before_rows_are_dropped_or_merged():
    """A bad 0/1 cell is refused even on a row the conflict policy would rewrite, and a one-column file without a
    separator is refused even when a union would create one."""
    flags = pd.DataFrame({"text": ["x", "x", "y", "z"], "a": ["1", "yes", "0", "1"], "b": ["0", "1", "1", "0"]})
    cfg = DataSection(label_columns=["a", "b"], on_conflicting_labels="union")
    with pytest.raises(DataError, match="holds 'yes'"):
        check_labelled(flags, cfg, "d.csv", MULTI_LABEL, 1)
    single = pd.DataFrame({"text": ["x", "x", "y", "z"], "labels": ["a", "b", "a", "b"]})
    cfg = DataSection(label_column="labels", on_conflicting_labels="union")
    with pytest.raises(DataError, match="no cell of label column 'labels' holds the separator"):
        check_labelled(single, cfg, "d.csv", MULTI_LABEL, 1, require_several=True)


# --- a multi-label checkpoint through every command --------------------------------------------------------------


@pytest.mark.slow
def test_both_input_forms_give_the_same_model(cli, workspace, ml_model, ml_data):
    flags = as_flag_columns(pd.read_csv(ml_data, dtype=str, keep_default_na=False))
    flags.to_csv("flags.csv", index=False)
    root = workspace / "ml-flags"
    code, _, err = cli("train", "--output-root", str(root), "--data-file", "flags.csv", "--multi-label",
                       "--label-columns", ",".join(reversed(KEEP)), "--num-epochs", "6", "-v", "0")  # fmt: skip
    assert code == 0, err
    a = load_checkpoint(ml_model / "best_trials" / "best_model.pt")
    b = load_checkpoint(root / "best_trials" / "best_model.pt")
    assert a.labels == b.labels == sorted(KEEP)
    assert a.rule.thresholds == pytest.approx(b.rule.thresholds)
    for key, tensor in a.state.items():
        torch.testing.assert_close(tensor, b.state[key])


def test_thresholds_round_trip_and_predict_writes_the_label_columns(cli, ml_model):
    ckpt = load_checkpoint(ml_model / "best_trials" / "best_model.pt")
    assert ckpt.task == MULTI_LABEL and len(ckpt.rule.thresholds) == len(KEEP)
    uncalibrated = load_checkpoint(ml_model / "best_trials" / "best_model.pt")
    uncalibrated.meta.calibration = None  # as a model saved without a calibration record: 0.5 for every label
    assert uncalibrated.rule.thresholds == (0.5,) * len(KEEP)
    assert ckpt.architecture.head.hidden_dims == [] and ckpt.architecture.lexical is not None
    assert ckpt.meta.metrics["test"]["micro_f1"] > 0.4
    code, out, err = cli("predict", "--output-root", str(ml_model), "--data-file", str(ml_model / "data" / "test.csv"),
                         "--output-file", "p.csv", "--top-k", "2", "-v", "0")  # fmt: skip
    assert code == 0, err
    assert "micro F1" in out and "subset accuracy" in out
    frame = pd.read_csv(ml_model / "predictions" / "p.csv", dtype=str, keep_default_na=False)
    prob_columns = [f"prob_{label}" for label in ckpt.labels]
    expected = ["text", "labels", "source_row", "predicted_labels", *prob_columns]
    expected += ["top1_label", "top1_prob", "top2_label", "top2_prob"]
    assert list(frame.columns) == expected
    probs = frame[prob_columns].astype(float).to_numpy()
    given = probs >= np.array(ckpt.rule.thresholds)
    joined = ["|".join(np.array(ckpt.labels)[row]) for row in given]
    assert frame.predicted_labels.tolist() == joined
    reported = ckpt.meta.metrics["test"]
    truth = label_matrix(frame, DataSection(label_column="labels"), ckpt.labels)
    assert label_set_scores(truth, given)["f1"] == pytest.approx(reported["f1"], abs=1e-6)


def test_min_confidence_applies_per_label(cli, ml_model):
    code, out, err = cli("predict", "--output-root", str(ml_model), "--data-file", str(ml_model / "data" / "test.csv"),
                         "--output-file", "p.csv", "--min-confidence", "0.9", "-v", "0")  # fmt: skip
    assert code == 0, err
    frame = pd.read_csv(ml_model / "predictions" / "p.csv", dtype=str, keep_default_na=False)
    assert {"unsure_labels", "abstained"} <= set(frame.columns)
    labels = load_checkpoint(ml_model / "best_trials" / "best_model.pt").labels
    for _, row in frame.iterrows():
        for label in filter(None, row.unsure_labels.split("|")):
            p = float(row[f"prob_{label}"])
            assert max(p, 1 - p) < 0.9 or label in labels
            assert label not in row.predicted_labels.split("|")
        assert (row.abstained == "true") == bool(row.unsure_labels)
    assert "label decisions sure enough" in out


@pytest.mark.slow
def test_evaluate_with_cross_validation_and_inspect(cli, ml_model):
    code, out, err = cli(
        "evaluate", "--output-root", str(ml_model), "--cv-folds", "3", "--find-label-issues", "-v", "0"
    )
    assert code == 0, err
    results = ml_model / "evaluation_results"
    for name in ("per_label_report.csv", "label_confusion_matrices.png", "label_cooccurrence.png",
                 "label_cooccurrence_true.csv", "label_cooccurrence_predicted.csv", "error_analysis.csv",
                 "error_wordclouds.png", "calibration.csv", "reliability_diagram.png", "cv_metrics.csv",
                 "label_issues.csv", "report.html", "fold_3/predictions.csv"):  # fmt: skip
        assert (results / name).is_file(), name
    report = pd.read_csv(results / "per_label_report.csv")
    assert report.label.tolist()[: len(KEEP)] == sorted(KEEP)
    cv = pd.read_csv(results / "cv_metrics.csv")
    assert {"macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss"} <= set(cv.columns)
    assert "CV micro F1 (3 folds)" in out and "Traceback" not in err
    code, out, _ = cli("inspect", "--output-root", str(ml_model), "--json")
    info = json.loads(out)
    assert info["architecture"]["task"].startswith("multilabel")
    assert set(info["thresholds"]) == set(KEEP)


@pytest.mark.slow
def test_optimize_tpe_and_the_trial_pass_through_predict_and_inspect(cli, workspace, ml_data):
    root = workspace / "ml-opt"
    code, out, err = cli("optimize", "--output-root", str(root), "--data-file", str(ml_data), "--label-column",
                         "labels", "--multi-label", "--n-trials", "2", "--num-epochs", "3", "-v", "0")  # fmt: skip
    assert code == 0, err
    ckpt = load_checkpoint(root / "best_trials" / "best_model.pt")
    assert ckpt.task == MULTI_LABEL and ckpt.meta.tuning.strategy == "tpe" and "linear_l2" in ckpt.meta.tuning.params
    code, _, err = cli("predict", "--output-root", str(root), "--data-file", str(root / "data" / "test.csv"), "-v", "0")
    assert code == 0, err
    code, out, _ = cli("inspect", "--output-root", str(root))
    assert code == 0 and "multilabel" in out
    code, out, err = cli("optimize", "--output-root", str(root), "--data-file", str(ml_data), "--label-column",
                         "labels", "--multi-label", "--strategy", "pbt", "--study-name", "pbt", "--num-epochs", "4",
                         "-v", "0")  # fmt: skip
    assert code == 0, err
    members = sorted(root.rglob("pbt_member_*.pt"))
    assert len(members) == 4
    member = load_checkpoint(members[0])
    assert member.task == MULTI_LABEL and member.meta.tuning.strategy == "pbt"
    assert "linear_l2" in member.meta.tuning.params
    code, _, err = cli("predict", "--output-root", str(root), "--model", str(members[0]), "--data-file",
                       str(root / "data" / "test.csv"), "--output-file", "m.csv", "-v", "0")  # fmt: skip
    assert code == 0, err
    code, _, err = cli("evaluate", "--output-root", str(root), "--model", str(members[0]), "--cv-folds", "0", "-v", "0")
    assert code == 0, err


@pytest.mark.slow
def test_fine_tuning_multilabel_with_min_labels_and_micro_f1(cli, workspace, ml_data):
    root = workspace / "ml-ft"
    code, out, err = cli("train", "--output-root", str(root), "--data-file", str(ml_data), "--label-column", "labels",
                         "--multi-label", "--fine-tune", "--num-epochs", "1", "--max-seq-len", "32",
                         "--metric", "micro_f1", "--min-labels", "1", "-v", "0")  # fmt: skip
    assert code == 0, err
    ckpt = load_checkpoint(root / "best_trials" / "best_model.pt")
    assert ckpt.fine_tuned and ckpt.task == MULTI_LABEL and ckpt.min_labels == 1
    assert ckpt.architecture.head.hidden_dims  # the MLP head: the linear one is for a frozen encoder
    code, _, err = cli("predict", "--output-root", str(root), "--data-file", str(root / "data" / "test.csv"),
                       "--output-file", "p.csv", "-v", "0")  # fmt: skip
    assert code == 0, err
    frame = pd.read_csv(root / "predictions" / "p.csv", dtype=str, keep_default_na=False)
    assert (frame.predicted_labels != "").all()  # min_labels 1: every text gets a label


@pytest.mark.slow
def test_onnx_export_of_a_multilabel_model_matches_torch_through_predict(cli, ml_model):
    from bertcls.inference.onnx_backend import OnnxPredictor
    from bertcls.runtime.layout import RunLayout

    code, _, err = cli("export", "--output-root", ml_model, "--verbosity", "0")
    assert code == 0, err
    manifest = OnnxPredictor(RunLayout(ml_model).export_dir).manifest
    ckpt = load_checkpoint(ml_model / "best_trials" / "best_model.pt")
    assert manifest.task == "multilabel" and manifest.thresholds == list(ckpt.rule.thresholds)
    assert manifest.min_labels == ckpt.rule.min_labels and manifest.checks["max_prob_diff"] <= 1e-4
    assert manifest.checks["label_agreement"] == 1.0
    test = str(ml_model / "data" / "test.csv")
    for backend in ("onnx", "torch"):
        code, out, err = cli("predict", "--output-root", ml_model, "--data-file", test, "--backend", backend,
                             "--precision" if backend == "torch" else "--top-k", "fp32" if backend == "torch" else "1",
                             "--output-file", f"{backend}.csv", "-v", "0")  # fmt: skip
        assert code == 0, err
    onnx = pd.read_csv(ml_model / "predictions" / "onnx.csv", dtype=str, keep_default_na=False)
    torch_out = pd.read_csv(ml_model / "predictions" / "torch.csv", dtype=str, keep_default_na=False)
    assert onnx.predicted_labels.tolist() == torch_out.predicted_labels.tolist()
    prob_columns = [f"prob_{label}" for label in ckpt.labels]
    diff = onnx[prob_columns].astype(float).to_numpy() - torch_out[prob_columns].astype(float).to_numpy()
    assert np.abs(diff).max() <= 1e-4
    code, out, err = cli("inspect", "--output-root", ml_model)
    assert code == 0, err
