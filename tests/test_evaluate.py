"""bertcls evaluate: every file, numbers equal to scikit-learn's, cross-validation, HTML report, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

FOLDS = 3
TOP_FILES = [
    "all_predictions.csv",
    "predictions.csv",
    "sklearn_classification_report.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "classification_report_heatmap.png",
    "confidence_analysis.csv",
    "error_analysis.csv",
    "error_metrics.csv",
    "error_confidence_dist.png",
    "error_confusion_patterns.png",
    "error_length_dist.png",
    "error_wordclouds.png",
    "cv_metrics.csv",
    "calibration.csv",
    "reliability_diagram.png",
    "risk_coverage.csv",
    "risk_coverage.png",
    "near_duplicates.csv",
    "report.html",
]
PLOTS = [f for f in TOP_FILES if f.endswith(".png")]


@pytest.fixture(autouse=True)
def _no_explained_errors(monkeypatch):
    """The tests below run evaluate for other reasons: they skip the explained errors of report.html (tested in
    test_explain.py; the module's ``evaluated`` fixture, set up before this one, keeps the default)."""
    monkeypatch.setenv("BERTCLS_EVALUATION__EXPLAIN_ERRORS", "0")


@pytest.fixture(scope="module")
def evaluated(trained_model, tmp_path_factory):
    """Evaluate the trained model on its test split, with 3-fold CV over train + val."""
    from bertcls.cli.app import run

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("eval"))
        stale = trained_model / "evaluation_results" / "stale.txt"
        stale.parent.mkdir(exist_ok=True)
        stale.write_text("from an earlier run")
        code = run(
            [
                "evaluate",
                "--output-root",
                str(trained_model),
                "--best-model",
                "best_model.pt",
                "--cv-folds",
                str(FOLDS),
                "--verbosity",
                "0",
            ]
        )
    assert code == 0
    return trained_model / "evaluation_results"


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"text": str, "true_label": str, "predicted_label": str}, keep_default_na=False)


@pytest.mark.slow
def test_every_file_exists_and_is_not_empty(evaluated):
    for name in TOP_FILES + [
        f"fold_{k}/{f}"
        for k in range(1, FOLDS + 1)
        for f in ("confusion_matrix.png", "error_analysis.csv", "predictions.csv")
    ]:
        assert (evaluated / name).is_file(), name
        assert (evaluated / name).stat().st_size > 0, name
    assert not (evaluated / "stale.txt").exists()  # the folder was replaced cleanly
    assert not [p for p in evaluated.parent.iterdir() if p.name.startswith(".evaluation_results")]


def test_numbers_equal_sklearn(evaluated, trained_model):
    test = pd.read_csv(trained_model / "data" / "test.csv", dtype=str, keep_default_na=False)
    predictions = read(evaluated / "predictions.csv")
    assert list(predictions.text) == list(test.text) and list(predictions.true_label) == list(test.category)
    truth, predicted = predictions.true_label, predictions.predicted_label
    labels = sorted(test.category.unique())
    confusion = pd.read_csv(evaluated / "confusion_matrix.csv", index_col=0)
    assert confusion.to_numpy().sum() == len(predictions)
    assert (confusion.to_numpy() == confusion_matrix(truth, predicted, labels=labels)).all()
    report = pd.read_csv(evaluated / "sklearn_classification_report.csv").set_index("label")
    p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    assert np.allclose(report.loc[labels, ["precision", "recall", "f1"]].to_numpy(), np.c_[p, r, f])
    assert list(report.loc[labels, "support"]) == list(s)
    macro = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    assert np.allclose(report.loc["macro avg", ["precision", "recall", "f1"]].to_numpy(dtype=float), macro[:3])
    errors = read(evaluated / "error_analysis.csv")
    assert len(errors) == int((truth != predicted).sum())
    metrics = pd.read_csv(evaluated / "error_metrics.csv")
    error_rate = metrics[(metrics.section == "overall") & (metrics["item"] == "error_rate")]["value"].iloc[0]
    assert np.isclose(error_rate, 1 - accuracy_score(truth, predicted))


def test_confidence_analysis_and_ece(evaluated):
    predictions = read(evaluated / "predictions.csv")
    table = pd.read_csv(evaluated / "confidence_analysis.csv", dtype=str)
    bins = table[table.bin_low != "ECE"].astype({"count": int})
    assert len(bins) == 10 and bins["count"].sum() == len(predictions)
    correct = (predictions.true_label == predictions.predicted_label).to_numpy()
    conf = predictions.confidence.to_numpy()
    edges = np.linspace(0, 1, 11)
    expected = sum(
        abs(correct[m].mean() - conf[m].mean()) * m.sum() / len(conf)
        for m in ((conf > lo) & (conf <= hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True))
        if m.any()
    )
    assert np.isclose(float(table[table.bin_low == "ECE"].accuracy.iloc[0]), expected)


def test_cross_validation_rows_and_out_of_fold_predictions(evaluated, trained_model):
    cv = pd.read_csv(evaluated / "cv_metrics.csv")
    assert len(cv) == FOLDS + 2 and list(cv.fold[-2:]) == ["mean", "std"]
    assert set(cv.columns) >= {"accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall"}
    assert np.isclose(cv.accuracy[:FOLDS].mean(), cv.accuracy.iloc[FOLDS])
    train_val = pd.concat(
        [pd.read_csv(trained_model / "data" / f"{s}.csv", dtype=str, keep_default_na=False) for s in ("train", "val")]
    )
    everything = read(evaluated / "all_predictions.csv")
    oof = everything[everything.source == "cross_validation"]
    assert len(oof) == len(train_val) and sorted(oof.text) == sorted(train_val.text)
    for fold, part in oof.groupby("fold"):  # identical texts never straddle folds
        others = set(oof[oof.fold != fold].text)
        assert not set(part.text) & others
    assert {f"prob_{c}" for c in train_val.category.unique()} <= set(everything.columns)


def test_report_is_self_contained_and_references_every_plot(evaluated):
    page = (evaluated / "report.html").read_text()
    for plot in PLOTS:
        assert f">{plot.removesuffix('.png').replace('_', ' ')}</figcaption>" in page
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert "http://" not in page and "https://" not in page and 'src="//' not in page
    # headline first, then the key plots, then the tables; long tables collapsed; no raw floats
    assert page.index('class="cards"') < page.index("reliability diagram") < page.index("<h2>Classification report")
    assert page.index("confusion matrix</figcaption>") < page.index("<h2>")
    assert "<details>" in page and "0.30000000000000004" not in page and ">nan<" not in page.lower()
    errors = pd.read_csv(evaluated / "error_analysis.csv")  # the most confident ones explained, word by word
    assert page.count('<div class="xpl"') == min(5, len(errors)) and "<script" not in page


def test_unseen_label_is_counted_not_fatal(cli, trained_model, tmp_path):
    test = pd.read_csv(trained_model / "data" / "test.csv", dtype=str, keep_default_na=False)
    test.loc[0, "category"] = "weather"
    test.loc[1, "category"] = "weather"
    path = tmp_path / "unseen.csv"
    test.to_csv(path, index=False)
    root = tmp_path / "root"
    root.mkdir()
    (root / "best_trials").mkdir()
    (root / "best_trials" / "best_model.pt").symlink_to(trained_model / "best_trials" / "best_model.pt")
    (root / "bert_encoder").symlink_to(trained_model / "bert_encoder")
    code, out, err = cli("evaluate", "--output-root", root, "--data-file", path, "--cv-folds", "0", "--verbosity", "0")
    assert code == 0, err
    assert "'weather' (2)" in out
    confusion = pd.read_csv(root / "evaluation_results" / "confusion_matrix.csv", index_col=0)
    assert "weather" in confusion.index and confusion.loc["weather"].sum() == 2


def test_class_smaller_than_folds_suggests_fewer_folds(cli, trained_model):
    code, _, err = cli("evaluate", "--output-root", trained_model, "--cv-folds", "60", "--verbosity", "0")
    assert code == 2 and "--cv-folds" in err and "Traceback" not in err


def test_one_fold_and_missing_splits_are_clear_errors(cli, trained_model, tmp_path):
    code, _, err = cli("evaluate", "--output-root", trained_model, "--cv-folds", "1")
    assert code == 2 and "at least 2 folds" in err
    (tmp_path / "test.csv").write_text("text,category\nstray file in the working directory,sport\n")
    empty_root = tmp_path / "fresh"
    (empty_root / "best_trials").mkdir(parents=True)
    (empty_root / "best_trials" / "best_model.pt").symlink_to(trained_model / "best_trials" / "best_model.pt")
    code, _, err = cli("evaluate", "--output-root", empty_root)
    assert code == 2 and "No test split" in err and str(empty_root / "data") in err.replace("\n", "")


def test_missing_checkpoint_or_data_is_exit_2_with_path(cli, trained_model, tmp_path):
    code, _, err = cli("evaluate", "--output-root", trained_model, "--best-model", "absent.pt")
    assert code == 2 and "absent.pt" in err
    code, _, err = cli("evaluate", "--output-root", trained_model, "--data-file", tmp_path / "gone.csv")
    assert code == 2 and "gone.csv" in err
