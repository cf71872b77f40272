"""Accuracy and macro F1 in numpy (identical to scikit-learn's with ``zero_division=0``), and the epoch record."""

from __future__ import annotations

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
