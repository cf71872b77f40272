"""Temperature scaling: one scalar T fitted on the validation split so that softmax(logits / T) has the lowest
negative log-likelihood (Guo et al., 2017). It changes confidences, never the predicted label.

A multi-label model gets one T per label (each fitted on that label's binary cross-entropy), and then one decision
threshold per label, tuned on the calibrated validation probabilities for that label's F1."""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from scipy.optimize import minimize_scalar

from bertcls.batches import BatchSource, predict_logits
from bertcls.config import CalibrationSection
from bertcls.metrics import tune_thresholds

logger = logging.getLogger(__name__)
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


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] with the lowest validation NLL (a bounded 1-D search over log T)."""
    loss = binary_nll if labels.ndim == 2 else nll
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


def calibrate(
    model, val: BatchSource, device: torch.device, cfg: CalibrationSection, bins: int = 10
) -> CalibrationRecord:
    """Fit the model's temperature on ``val`` (``calibration.method: temperature``) and set it on the model; a
    multi-label model then gets its per-label thresholds (with or without a temperature)."""
    model.temperature = 1.0
    if model.multilabel:
        record = calibrate_multilabel(model, val, device, cfg, bins)
        model.thresholds = record.thresholds
        return record
    if cfg.method == "none" or len(val) == 0:
        return CalibrationRecord()
    logits = predict_logits(model, val, device)
    labels = val.labels
    if (logits.argmax(axis=1) == labels).all():
        # with no error to learn from, the likelihood only rises as T falls to its bound (every confidence 1.0)
        logger.info("No validation errors to calibrate against: temperature stays 1")
        return CalibrationRecord(method="temperature", val_rows=len(labels))
    temperature = fit_temperature(logits, labels)
    model.temperature = temperature
    correct = logits.argmax(axis=1) == labels
    confidence = lambda t: np.exp(log_softmax(logits / t)).max(axis=1)  # noqa: E731
    record = CalibrationRecord(
        method="temperature",
        temperature=temperature,
        val_rows=len(labels),
        val_nll_before=nll(logits, labels),
        val_nll_after=nll(logits, labels, temperature),
        val_ece_before=ece(confidence(1.0), correct, bins),
        val_ece_after=ece(confidence(temperature), correct, bins),
    )
    logger.info(
        "Temperature %.3f fitted on %d validation rows: NLL %.4f -> %.4f, ECE %.4f -> %.4f",
        temperature,
        len(labels),
        record.val_nll_before,
        record.val_nll_after,
        record.val_ece_before,
        record.val_ece_after,
    )
    return record


def label_temperatures(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One temperature per label, each fitted on that label's binary NLL; a label decided right on every
    validation row keeps 1 (its likelihood would only rise as T fell to the bound)."""
    temperatures = np.ones(labels.shape[1])
    for k in range(labels.shape[1]):
        column, truth = logits[:, [k]], labels[:, [k]]
        if not label_decisions(sigmoid(column), truth)[1].all():
            temperatures[k] = fit_temperature(column, truth)
    return temperatures


def calibrate_multilabel(
    model, val: BatchSource, device: torch.device, cfg: CalibrationSection, bins: int
) -> CalibrationRecord:
    """A temperature per label, then per-label thresholds on the calibrated validation probabilities."""
    if len(val) == 0:
        return CalibrationRecord(thresholds=[0.5] * model.head.spec.num_classes)
    logits, labels = predict_logits(model, val, device), val.labels
    fitted = cfg.method == "temperature"
    temperatures = label_temperatures(logits, labels) if fitted else np.ones(labels.shape[1])
    model.temperature = temperatures.astype(np.float32)
    thresholds = tune_thresholds(sigmoid(logits / temperatures), labels)
    ece_at = lambda t: ece(*label_decisions(sigmoid(logits / t), labels), bins)  # noqa: E731
    record = CalibrationRecord(
        method=cfg.method,
        temperature=float(np.exp(np.log(temperatures).mean())),
        temperatures=[float(t) for t in temperatures],
        val_rows=len(labels),
        val_nll_before=binary_nll(logits, labels) if fitted else None,
        val_nll_after=binary_nll(logits, labels, temperatures) if fitted else None,
        val_ece_before=ece_at(1.0) if fitted else None,
        val_ece_after=ece_at(temperatures) if fitted else None,
        thresholds=[float(t) for t in thresholds],
    )
    logger.info("%d per-label temperatures and thresholds fitted on %d validation rows", len(thresholds), len(labels))
    return record


def describe(record: CalibrationRecord | None) -> str:
    if record is None or record.method == "none":
        return "none (temperature 1)"
    if record.val_nll_before is None:
        return f"temperature 1 (no errors on the {record.val_rows} validation rows to fit one on)"
    return (
        f"temperature {record.temperature:.3f} (validation NLL {record.val_nll_before:.4f} -> "
        f"{record.val_nll_after:.4f}, ECE {record.val_ece_before:.4f} -> {record.val_ece_after:.4f})"
    )
