"""Temperature scaling's toolbox: the record calibration leaves in a checkpoint, NLLs, ECE binning, the bounded
search for T (Guo et al., 2017), and undoing a temperature. Temperature scaling changes confidences, never the
predicted label. Each task (:mod:`bertcls.task`) fits its own form: one T, or one T and one threshold per label."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import minimize_scalar

LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


class CalibrationRecord(BaseModel):
    """What calibration fitted and what it changed on the validation split; stored in checkpoints."""

    model_config = ConfigDict(extra="forbid")

    method: str = "none"
    temperature: float = 1.0
    val_rows: int = 0
    val_nll_before: float | None = None
    val_nll_after: float | None = None
    val_ece_before: float | None = None
    val_ece_after: float | None = None
    thresholds: list[float] | None = None  # multi-label: each label's decision threshold, in label order
    temperatures: list[float] | None = None  # multi-label: each label's temperature (``temperature``: their
    # geometric mean, for display)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    scores = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-scores[np.arange(len(labels)), labels].mean())


def bin_edges(bins: int) -> np.ndarray:
    """Edges of ``bins`` equal-width confidence bins, rounded (0.3, not 0.30000000000000004)."""
    return np.round(np.linspace(0.0, 1.0, bins + 1), 6)


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each confidence: (low, high], the first bin also holding 0 (the one binning bertcls uses)."""
    return np.clip(np.digitize(confidence, bin_edges(bins)[1:-1], right=True), 0, bins - 1)


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Expected calibration error over ``bins`` equal-width confidence bins (the one ECE bertcls reports)."""
    which = bin_index(confidence, bins)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() / len(confidence) * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def binary_nll(logits: np.ndarray, labels: np.ndarray, temperature=1.0) -> float:
    """Mean binary cross-entropy of 0/1 ``labels`` under sigmoid(logits / temperature), over every row and label
    (``temperature``: one number, or one per label)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return float((np.logaddexp(0.0, z) - labels * z).mean())


def label_decisions(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, label) decision at 0.5 as a confidence (max of p and 1 - p) and whether it is right: the units in
    which a multi-label model's calibration is measured."""
    return np.maximum(probs, 1 - probs).ravel(), ((probs >= 0.5) == (labels > 0)).ravel()


def fit_temperature(logits: np.ndarray, labels: np.ndarray, loss: Callable[..., float] = nll) -> float:
    """The T in [0.05, 20] with the lowest validation ``loss`` (:func:`nll`, or :func:`binary_nll` for sigmoids): a
    bounded 1-D search over log T."""
    result = minimize_scalar(
        lambda log_t: loss(logits, labels, float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded"
    )
    return float(np.exp(result.x))


def uncalibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling, recovered from the calibrated ones: softmax(T * log p)."""
    return np.exp(log_softmax(temperature * np.log(np.clip(probs.astype(np.float64), 1e-300, 1.0))))


def uncalibrate_sigmoid(probs: np.ndarray, temperature) -> np.ndarray:
    """Multi-label probabilities before temperature scaling: sigmoid(T * logit(p)) (T: one, or one per label)."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
    return sigmoid(temperature * np.log(p / (1 - p)))


def describe(record: CalibrationRecord | None) -> str:
    if record is None or record.method == "none":
        return "none (temperature 1)"
    if record.val_nll_before is None:
        return f"temperature 1 (no errors on the {record.val_rows} validation rows to fit one on)"
    return (
        f"temperature {record.temperature:.3f} (validation NLL {record.val_nll_before:.4f} -> "
        f"{record.val_nll_after:.4f}, ECE {record.val_ece_before:.4f} -> {record.val_ece_after:.4f})"
    )
