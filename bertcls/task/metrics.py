"""Accuracy and F1 in numpy (identical to scikit-learn's with ``zero_division=0``) for one label per text and for
label sets, per-label decision thresholds, and the epoch record."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict


class EpochRecord(BaseModel):
    """One epoch of training: losses, validation metrics, learning rate, batch size and time (kept in checkpoints)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int
    train_loss: float
    val_loss: float
    accuracy: float
    f1: float
    micro_f1: float | None = None
    samples_f1: float | None = None
    lr: float
    batch_size: int
    seconds: float


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 of each class index ``0..num_classes-1``; labels outside that range count only as errors."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = np.zeros(num_classes)
    for k in range(num_classes):
        tp = np.sum((y_pred == k) & (y_true == k))
        denominator = 2 * tp + np.sum((y_pred == k) & (y_true != k)) + np.sum((y_pred != k) & (y_true == k))
        scores[k] = 2 * tp / denominator if denominator else 0.0
    return scores


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    return float(per_class_f1(y_true, y_pred, num_classes).mean())


def tune_thresholds(probs: np.ndarray, truth: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per label, the probability cut with the best F1 on these rows (a label is given at probability >= cut): the
    midpoint between the lowest probability kept and the next one below. A label without positive rows keeps
    ``default``."""
    probs = np.asarray(probs, dtype=np.float64)  # a float32 midpoint of adjacent values rounds onto the lower one
    thresholds = np.full(probs.shape[1], default, dtype=np.float64)
    for k in range(probs.shape[1]):
        positives = truth[:, k] > 0
        if not positives.any():
            continue
        order = np.argsort(-probs[:, k], kind="stable")
        ranked, hits = probs[order, k], positives[order]
        last_of_value = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # cut only between values
        tp = np.cumsum(hits)[last_of_value]
        f1 = 2 * tp / (last_of_value + 1 + positives.sum())
        best = last_of_value[int(np.argmax(f1))]
        below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
        thresholds[k] = (ranked[best] + below) / 2
    return thresholds


def binary_log_loss(probs: np.ndarray, truth: np.ndarray) -> float:
    """Mean binary cross-entropy of 0/1 ``truth`` under probabilities ``probs``, over every row and label."""
    if not len(truth):
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())


def label_counts(truth: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives per label."""
    truth, given = truth > 0, np.asarray(given, dtype=bool)
    return (truth & given).sum(axis=0), (~truth & given).sum(axis=0), (truth & ~given).sum(axis=0)


def per_label_scores(truth: np.ndarray, given: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every label."""
    tp, fp, fn = label_counts(truth, given)
    ratio = lambda a, b: np.divide(a, b, out=np.zeros(len(a)), where=b > 0)  # noqa: E731
    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "support": (truth > 0).sum(axis=0),
    }


def label_set_scores(truth: np.ndarray, given: np.ndarray) -> dict[str, float]:
    """Macro F1 (``f1``), micro and samples F1, subset accuracy (``accuracy``) and Hamming loss."""
    truth, given = truth > 0, np.asarray(given, dtype=bool)
    if not len(truth):
        return {"f1": 0.0, "micro_f1": 0.0, "samples_f1": 0.0, "accuracy": 0.0, "hamming_loss": 0.0}
    tp, fp, fn = label_counts(truth, given)
    micro = 2 * tp.sum() / max(1, 2 * tp.sum() + fp.sum() + fn.sum())
    row_tp = (truth & given).sum(axis=1)
    row_denominator = truth.sum(axis=1) + given.sum(axis=1)
    samples = np.divide(2 * row_tp, row_denominator, out=np.zeros(len(truth)), where=row_denominator > 0)
    return {
        "f1": float(per_label_scores(truth, given)["f1"].mean()),
        "micro_f1": float(micro),
        "samples_f1": float(samples.mean()),
        "accuracy": float((truth == given).all(axis=1).mean()),
        "hamming_loss": float((truth != given).mean()),
    }


def label_indices(values: Iterable[str], names: Sequence[str]) -> np.ndarray:
    """Each value's index in ``names``, -1 for a value not among them: the one label -> class index mapping."""
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(value, -1) for value in values], dtype=np.int64)


def categorical_nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of class indices ``labels`` under the rows of ``probs`` (NaN with no rows)."""
    if not len(labels):
        return float("nan")
    picked = np.clip(np.asarray(probs)[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(picked).mean())
