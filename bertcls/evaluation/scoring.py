"""Evaluation tables: predictions, classification report, confusion matrix, calibration, errors, CV summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from bertcls.task.calibration import bin_edges, bin_index, ece


def prediction_frames(
    texts: list[str], truth: list[str], probs: np.ndarray, labels: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """predictions.csv (text, true, predicted, confidence) and all_predictions.csv (plus prob_<label>)."""
    best = probs.argmax(axis=1)
    predictions = pd.DataFrame(
        {
            "text": texts,
            "true_label": truth,
            "predicted_label": np.array(labels, dtype=object)[best],
            "confidence": probs.max(axis=1),
        }
    )
    all_predictions = predictions.copy()
    for i, label in enumerate(labels):
        all_predictions[f"prob_{label}"] = probs[:, i]
    return predictions, all_predictions


def report_labels(model_labels: list[str], truth: list[str]) -> list[str]:
    """The model's labels, then any true label the model never saw."""
    return list(model_labels) + sorted(set(truth) - set(model_labels))


def classification_report_frame(truth: list[str], predicted: list[str], labels: list[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1, support, then macro and weighted averages."""
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    rows = pd.DataFrame({"label": labels, "precision": precision, "recall": recall, "f1": f1, "support": support})
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average=average, zero_division=0)
        rows.loc[len(rows)] = [f"{average} avg", p, r, f, int(support.sum())]
    return rows


def confusion_frame(truth: list[str], predicted: list[str], labels: list[str]) -> pd.DataFrame:
    matrix = confusion_matrix(truth, predicted, labels=labels)
    frame = pd.DataFrame(matrix, index=pd.Index(labels, name="true \\ predicted"), columns=labels)
    return frame


def confidence_frame(confidence: np.ndarray, correct: np.ndarray, bins: int) -> tuple[pd.DataFrame, float]:
    """Count and accuracy per confidence bin, and the expected calibration error (ECE)."""
    edges, which = bin_edges(bins), bin_index(confidence, bins)
    rows, error = [], ece(confidence, correct, bins)
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        accuracy = float(correct[mask].mean()) if count else np.nan
        mean_conf = float(confidence[mask].mean()) if count else np.nan
        rows.append(
            {
                "bin_low": edges[b],
                "bin_high": edges[b + 1],
                "count": count,
                "accuracy": accuracy,
                "mean_confidence": mean_conf,
            }
        )
    frame = pd.DataFrame(rows).astype(object)
    frame.loc[len(frame)] = {
        "bin_low": "ECE",
        "bin_high": "",
        "count": len(confidence),
        "accuracy": error,
        "mean_confidence": "",
    }
    return frame, error


def error_frame(predictions: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """Every misclassified row with its confidence, the top-two margin and the text length."""
    ordered = np.sort(probs, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if probs.shape[1] > 1 else ordered[:, -1]
    frame = predictions.assign(
        margin=margin, text_length=predictions.text.str.len(), word_count=predictions.text.str.split().str.len()
    )
    wrong = frame[frame.true_label != frame.predicted_label]
    return wrong.sort_values("confidence", ascending=False).reset_index(drop=True)


def confusion_pairs(predictions: pd.DataFrame, top: int) -> pd.DataFrame:
    wrong = predictions[predictions.true_label != predictions.predicted_label]
    pairs = wrong.groupby(["true_label", "predicted_label"]).size().rename("count").reset_index()
    return pairs.sort_values(["count", "true_label"], ascending=[False, True]).head(top).reset_index(drop=True)


def error_metrics_frame(predictions: pd.DataFrame, labels: list[str], top: int) -> pd.DataFrame:
    """Long format (section, item, value): error rate per class, most confused pairs, and the confidence of errors
    against that of correct predictions."""
    rows = []
    correct = predictions.true_label == predictions.predicted_label
    for label in labels:
        mask = predictions.true_label == label
        if mask.any():
            rows.append({"section": "error_rate_by_class", "item": label, "value": float(1 - correct[mask].mean())})
    for _, pair in confusion_pairs(predictions, top).iterrows():
        rows.append(
            {
                "section": "confused_pair",
                "item": f"{pair.true_label} -> {pair.predicted_label}",
                "value": int(pair["count"]),
            }
        )
    rows.append({"section": "overall", "item": "error_rate", "value": float(1 - correct.mean())})
    rows.append(
        {
            "section": "overall",
            "item": "mean_confidence_errors",
            "value": float(predictions.confidence[~correct].mean()) if (~correct).any() else np.nan,
        }
    )
    rows.append(
        {
            "section": "overall",
            "item": "mean_confidence_correct",
            "value": float(predictions.confidence[correct].mean()) if correct.any() else np.nan,
        }
    )
    return pd.DataFrame(rows)


def summary_metrics(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, macro and weighted F1, macro precision and recall (labels the model never saw count as errors)."""
    accuracy = float(np.mean(np.asarray(truth) == np.asarray(predicted))) if len(truth) else 0.0
    p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average="macro", zero_division=0)
    _, _, wf, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average="weighted", zero_division=0)
    return {
        "accuracy": accuracy,
        "macro_f1": float(f),
        "weighted_f1": float(wf),
        "macro_precision": float(p),
        "macro_recall": float(r),
    }
