"""Multi-label evaluation tables: predictions, per-label report and confusion counts, co-occurrence, per-label
errors, calibration per label, label issues."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bertcls.task.calibration import ece, label_decisions, uncalibrate_sigmoid
from bertcls.task.metrics import binary_log_loss, label_set_scores, per_label_scores


def joined(matrix: np.ndarray, labels: list[str], separator: str) -> list[str]:
    names = np.array(labels, dtype=object)
    return [separator.join(names[row > 0]) for row in matrix]


def prediction_frames(texts, truth, given, probs, labels, separator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """predictions.csv (text, true and predicted label sets, wrong label decisions, exact match) and
    all_predictions.csv (plus prob_<label>)."""
    wrong = ((truth > 0) != given).sum(axis=1)
    predictions = pd.DataFrame(
        {
            "text": texts,
            "true_labels": joined(truth, labels, separator),
            "predicted_labels": joined(given, labels, separator),
            "wrong_labels": wrong,
            "exact_match": wrong == 0,
        }
    )
    probabilities = pd.DataFrame(probs, columns=[f"prob_{label}" for label in labels])
    return predictions, pd.concat([predictions, probabilities], axis=1)


def summary_metrics(truth: np.ndarray, given: np.ndarray) -> dict[str, float]:
    scores = label_set_scores(truth, given)
    return {
        "macro_f1": scores["f1"],
        "micro_f1": scores["micro_f1"],
        "samples_f1": scores["samples_f1"],
        "subset_accuracy": scores["accuracy"],
        "hamming_loss": scores["hamming_loss"],
    }


def label_report(truth, given, probs, labels, thresholds, temperatures, bins: int) -> pd.DataFrame:
    """Per label: precision, recall, F1, support, how often given, its threshold and temperature, its confusion
    counts and its calibration error; then the micro, macro and samples averages."""
    scores = per_label_scores(truth, given)
    present, given = truth > 0, np.asarray(given, dtype=bool)
    frame = pd.DataFrame(
        {
            "label": labels,
            "precision": scores["precision"],
            "recall": scores["recall"],
            "f1": scores["f1"],
            "support": scores["support"],
            "given": given.sum(axis=0),
            "threshold": thresholds,
            "temperature": np.broadcast_to(np.asarray(temperatures, dtype=np.float64), (len(labels),)),
            "tp": (present & given).sum(axis=0),
            "fp": (~present & given).sum(axis=0),
            "fn": (present & ~given).sum(axis=0),
            "tn": (~present & ~given).sum(axis=0),
            "ece": [ece(*label_decisions(probs[:, [k]], truth[:, [k]]), bins) for k in range(len(labels))],
        }
    )
    overall = label_set_scores(truth, given)
    averages = [
        ("micro avg", overall["micro_f1"]),
        ("macro avg", overall["f1"]),
        ("samples avg", overall["samples_f1"]),
    ]
    for name, f1 in averages:
        frame.loc[len(frame)] = {"label": name, "f1": f1, "support": int(present.sum())}
    return frame


def cooccurrence(matrix: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Texts carrying both labels (the diagonal: texts carrying the label)."""
    ones = (np.asarray(matrix) > 0).astype(np.int64)
    return pd.DataFrame(ones.T @ ones, index=pd.Index(labels, name="label"), columns=labels)


def label_errors(texts, truth, given, probs, labels, thresholds) -> pd.DataFrame:
    """One row per wrong label decision: the text, the label, false positive or false negative, its probability and
    threshold, and the row's true and predicted label sets; the most confident mistakes first."""
    rows, cols = np.nonzero((truth > 0) != given)
    margin = np.abs(probs[rows, cols] - np.asarray(thresholds)[cols])
    frame = pd.DataFrame(
        {
            "text": np.asarray(texts, dtype=object)[rows],
            "label": np.array(labels, dtype=object)[cols],
            "error": np.where(given[rows, cols], "false positive", "false negative"),
            "probability": probs[rows, cols],
            "threshold": np.asarray(thresholds)[cols],
            "margin": margin,
            "text_length": [len(t) for t in np.asarray(texts, dtype=object)[rows]],
        }
    )
    return frame.sort_values("margin", ascending=False).reset_index(drop=True)


def wordcloud_texts(texts, truth, given, labels, top: int = 9) -> dict[str, tuple[list[str], list[str]]]:
    """For the ``top`` labels with most errors: texts decided wrongly on that label, and texts where it is present
    and was given."""
    present = truth > 0
    wrong = present != given
    order = np.argsort(-wrong.sum(axis=0), kind="stable")[:top]
    texts = np.asarray(texts, dtype=object)
    return {
        labels[k]: (texts[wrong[:, k]].tolist(), texts[present[:, k] & given[:, k]].tolist())
        for k in order
        if wrong[:, k].any()
    }


def calibration_frame(probs, truth, temperature, shown: float, bins: int) -> pd.DataFrame:
    """ECE and binary negative log-likelihood over every label decision, before (temperature 1) and after
    calibration with ``temperature`` (one per label; ``shown``: their geometric mean), the same columns as the
    single-label calibration.csv."""
    rows = []
    for stage, p in (("before", uncalibrate_sigmoid(probs, temperature)), ("after", probs.astype(np.float64))):
        rows.append(
            {
                "calibration": stage,
                "temperature": 1.0 if stage == "before" else shown,
                "ece": ece(*label_decisions(p, truth), bins),
                "nll": binary_log_loss(p, truth),
            }
        )
    return pd.DataFrame(rows)


def label_set_issues(
    frame: pd.DataFrame, oof: np.ndarray, truth: np.ndarray, labels: list[str], text_column: str, separator: str
) -> pd.DataFrame:
    """Rows whose label set confident learning (cleanlab, ``multi_label=True``) finds unlikely under the out-of-fold
    probabilities, worst first, with the labels it doubts and suggests."""
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    given_lists = [list(np.flatnonzero(row > 0)) for row in truth]
    ranked = find_label_issues(given_lists, oof, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(given_lists, oof)
    rows = frame.iloc[ranked]
    predicted = oof[ranked] >= 0.5
    return pd.DataFrame(
        {
            "source_row": rows["source_row"].to_numpy() if "source_row" in rows.columns else "",
            "split": rows["split"].to_numpy() if "split" in rows.columns else "",
            "text": rows[text_column].to_numpy(),
            "given_labels": joined(truth[ranked], labels, separator),
            "suggested_labels": joined(predicted, labels, separator),
            "label_quality": quality[ranked],
        }
    )
