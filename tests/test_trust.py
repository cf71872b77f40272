"""Calibration, abstention, label issues, --exclude-rows and near-duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.evaluation.trust import near_duplicates, risk_coverage, threshold_for
from bertcls.model.checkpoint import build_classifier, load_named_checkpoint
from bertcls.task.calibration import fit_temperature, nll, uncalibrate
from tests.conftest import thread_subset


def overconfident_logits(seed: int = 0, rows: int = 400, classes: int = 4):
    """Logits that are right 80% of the time but scaled as if always right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    predicted = np.where(rng.random(rows) < 0.8, labels, rng.integers(0, classes, rows))
    logits = rng.normal(0, 0.3, (rows, classes))
    logits[np.arange(rows), predicted] += 12.0
    return logits, labels


def test_temperature_lowers_nll_of_an_overconfident_model():
    logits, labels = overconfident_logits()
    temperature = fit_temperature(logits[:200], labels[:200])
    assert temperature > 2  # over-confident logits are cooled
    assert nll(logits[200:], labels[200:], temperature) < 0.5 * nll(logits[200:], labels[200:])
    assert (logits / temperature).argmax(1).tolist() == logits.argmax(1).tolist()  # labels never change


def test_uncalibrate_recovers_the_raw_probabilities():
    logits, _ = overconfident_logits(rows=20)
    raw = torch.softmax(torch.tensor(logits), 1).numpy()
    calibrated = torch.softmax(torch.tensor(logits) / 3.0, 1).numpy()
    assert np.allclose(uncalibrate(calibrated, 3.0), raw, atol=1e-6)


def test_temperature_round_trips_through_the_checkpoint(trained_model, threads_small, cli):
    ckpt = load_named_checkpoint(None, trained_model)
    record = ckpt.meta.calibration
    assert record.method == "temperature" and record.val_nll_after <= record.val_nll_before + 1e-9
    model, _ = build_classifier(ckpt, trained_model)
    assert model.rule.temperature == ckpt.temperature == pytest.approx(record.temperature)
    code, out, _ = cli("inspect", "--output-root", trained_model)
    assert code == 0 and f"temperature {record.temperature:.3f}" in out


@pytest.mark.slow
def test_min_confidence_one_abstains_everywhere_and_zero_nowhere(trained_model, threads_small, cli):
    for threshold, expected in (("1.0", "true"), ("0", "false")):
        name = f"abstain_{threshold}.csv"
        code, out, err = cli(
            "predict", "--output-root", trained_model, "--data-file", threads_small, "--min-confidence", threshold,
            "--output-file", name,
        )  # fmt: skip
        assert code == 0, err
        frame = pd.read_csv(trained_model / "predictions" / name, dtype=str, keep_default_na=False)
        assert set(frame.abstained) == {expected}
        assert (frame.predicted_label == "").all() == (expected == "true")
        assert "coverage" in out and ("0.0%" if expected == "true" else "100.0%") in out


@pytest.mark.parametrize("value", ["-0.1", "1.5", "high"])
def test_bad_min_confidence_is_one_sentence(trained_model, threads_small, cli, value):
    code, _, err = cli(
        "predict", "--output-root", trained_model, "--data-file", threads_small, "--min-confidence", value
    )
    assert code == 2 and "min-confidence" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_risk_coverage_names_the_threshold_that_reaches_a_target():
    probs = np.array([[0.99, 0.01], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    truth = np.array([0, 0, 1, 0])
    curve = risk_coverage(probs, truth)
    best = threshold_for(curve, 1.0)
    assert best.coverage == 0.5 and best.accuracy == 1.0 and best.threshold == pytest.approx(0.9)
    assert threshold_for(curve.assign(accuracy=0.5), 0.99) is None


@pytest.mark.slow
def test_label_issue_finder_finds_flipped_labels(trained_model, threads_small, cli, tmp_path):
    frame = pd.read_csv(threads_small, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(frame), size=10, replace=False)
    names = sorted(frame.category.unique())
    for row in flipped:
        frame.loc[row, "category"] = names[(names.index(frame.category[row]) + 1) % len(names)]
    noisy = tmp_path / "noisy.csv"
    frame.to_csv(noisy, index=False)
    code, out, err = cli(
        "evaluate", "--output-root", trained_model, "--data-file", noisy, "--cv-folds", "3", "--find-label-issues",
        "--verbosity", "0",
    )  # fmt: skip
    assert code == 0, err
    issues = pd.read_csv(trained_model / "evaluation_results" / "label_issues.csv", keep_default_na=False)
    found = set(issues.source_row) & {int(r) + 2 for r in flipped}
    assert len(found) >= 7, (sorted(found), len(issues))  # most of them (8 or 7 of 10 as measured)
    assert len(issues) <= 20  # precise, not a list of everything
    assert issues.given_label_probability.is_monotonic_increasing  # worst first
    page = (trained_model / "evaluation_results" / "report.html").read_text()
    assert "Likely label issues" in page


def test_find_label_issues_needs_folds(trained_model, cli):
    code, _, err = cli("evaluate", "--output-root", trained_model, "--cv-folds", "0", "--find-label-issues")
    assert code == 2 and "--cv-folds 2 or more" in err


@pytest.mark.slow
def test_exclude_rows_leaves_exactly_those_rows_out(threads_small, cli, tmp_path):
    listed = tmp_path / "issues.csv"
    pd.DataFrame({"source_row": [2, 5, 17], "text": ["x", "y", "z"]}).to_csv(listed, index=False)
    root = tmp_path / "excluded"
    code, _, err = cli(
        "train", "--output-root", root, "--data-file", threads_small, "--exclude-rows", listed, "--num-epochs", "1",
        "--verbosity", "0",
    )  # fmt: skip
    assert code == 0, err
    kept = pd.concat([pd.read_csv(root / "data" / f"{s}.csv") for s in ("train", "val", "test")])
    assert len(kept) == len(pd.read_csv(threads_small)) - 3
    assert not {2, 5, 17} & set(kept.source_row) and kept.source_row.is_unique
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"source_row": [99999]}).to_csv(bad, index=False)
    code, _, err = cli("train", "--output-root", root, "--data-file", threads_small, "--exclude-rows", bad)
    assert code == 2 and "does not have" in err


def test_near_duplicate_with_a_changed_label_is_found(workspace):
    from bertcls.config.settings import EncoderSection
    from bertcls.evaluation.trust import near_duplicate_frame
    from bertcls.features.service import EmbeddingService

    frame = thread_subset(3, seed=11)
    train, test = frame.iloc[:12].reset_index(drop=True), frame.iloc[12:].reset_index(drop=True)
    copied = train.iloc[[4]].assign(category="not-" + train.category[4])  # the same text, another label
    test = pd.concat([test, copied], ignore_index=True)
    service = EmbeddingService(EncoderSection(), 64, workspace, torch.device("cpu"), precision="fp32")
    pairs = near_duplicates(service.embed(train.text.tolist())[0], service.embed(test.text.tolist())[0], 0.97, 2)
    found = near_duplicate_frame(train, test, pairs, "text", "category")
    assert len(found) >= 1
    top = found.iloc[0]
    assert top.different_labels and top.train_text == train.text[4] and top.similarity > 0.999
