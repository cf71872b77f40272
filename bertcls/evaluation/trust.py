"""What makes predictions trustworthy: calibration before and after temperature scaling, risk against coverage when
abstaining below a confidence, likely label errors (confident learning on out-of-fold probabilities), and near-
duplicate texts across the training and test data."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from bertcls.task.calibration import bin_edges, bin_index, ece, uncalibrate
from bertcls.task.metrics import categorical_nll, label_indices

logger = logging.getLogger(__name__)
RISK_POINTS = 101


def truth_indices(truth: list[str], labels: list[str]) -> np.ndarray:
    """Index of each true label among the model's labels, -1 for a label it never saw."""
    return label_indices(truth, labels)


def calibration_summary(probs: np.ndarray, truth: np.ndarray, temperature: float, bins: int) -> pd.DataFrame:
    """ECE and negative log-likelihood before (temperature 1) and after calibration, on rows with a known label."""
    known = truth >= 0
    rows = []
    for stage, p in (("before", uncalibrate(probs, temperature)), ("after", probs.astype(np.float64))):
        p, y = p[known], truth[known]
        correct = p.argmax(axis=1) == y
        rows.append(
            {
                "calibration": stage,
                "temperature": 1.0 if stage == "before" else temperature,
                "ece": ece(p.max(axis=1), correct, bins),
                "nll": categorical_nll(p, y),
            }
        )
    return pd.DataFrame(rows)


def reliability_frame(confidence: np.ndarray, correct: np.ndarray, bins: int) -> pd.DataFrame:
    """Per confidence bin: its range, row count, mean confidence and accuracy (empty bins have no values)."""
    edges, which = bin_edges(bins), bin_index(confidence, bins)
    rows = []
    for b in range(bins):
        mask = which == b
        rows.append(
            {
                "bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}",
                "rows": int(mask.sum()),
                "mean_confidence": float(confidence[mask].mean()) if mask.any() else None,
                "accuracy": float(correct[mask].mean()) if mask.any() else None,
            }
        )
    return pd.DataFrame(rows)


def risk_coverage(probs: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """Accuracy and macro F1 of the rows kept when abstaining below each threshold, against their coverage."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    # thresholds are confidences that occur (so each names the lowest confidence it keeps), at most RISK_POINTS
    points = np.quantile(confidence, np.linspace(0, 1, RISK_POINTS), method="inverted_cdf")
    thresholds = np.unique(np.concatenate([[0.0], points]))
    rows = []
    for threshold in thresholds:
        kept = confidence >= threshold
        if not kept.any():
            continue
        y, p = truth[kept], predicted[kept]
        rows.append(
            {
                "threshold": float(threshold),
                "coverage": float(kept.mean()),
                "rows_kept": int(kept.sum()),
                "accuracy": float((y == p).mean()),
                # over the classes present among the kept rows (a class with no kept row is not an error)
                "macro_f1": float(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)),
            }
        )
    return pd.DataFrame(rows)


def threshold_for(curve: pd.DataFrame, target_accuracy: float) -> pd.Series | None:
    """The row of the lowest threshold (most coverage) whose kept rows reach ``target_accuracy``, if any."""
    reaching = curve[curve.accuracy >= target_accuracy]
    return None if reaching.empty else reaching.sort_values("coverage", ascending=False).iloc[0]


def label_issues(
    frame: pd.DataFrame,
    oof_probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    text_column: str,
    label_column: str,
) -> pd.DataFrame:
    """Rows whose given label confident learning (cleanlab) finds unlikely under out-of-fold probabilities, worst
    first: source row, split, text, given and suggested label, the given label's probability, a quality score."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: no worker processes forked from a process that holds torch threads (a forked worker can hang)
    ranked = find_label_issues(labels, oof_probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(labels, oof_probs, method="self_confidence")
    rows = frame.iloc[ranked]
    # splits written before line numbers were kept have none: leave them blank rather than guess
    source_rows = rows["source_row"].to_numpy() if "source_row" in rows.columns else [""] * len(rows)
    return pd.DataFrame(
        {
            "source_row": source_rows,
            "split": rows["split"].to_numpy() if "split" in rows.columns else "",
            "text": rows[text_column].to_numpy(),
            "given_label": rows[label_column].to_numpy(),
            "suggested_label": np.array(names, dtype=object)[oof_probs[ranked].argmax(axis=1)],
            "given_label_probability": oof_probs[ranked, labels[ranked]],
            "label_quality": quality[ranked],
        }
    )


def near_duplicates(
    train_vectors: np.ndarray, test_vectors: np.ndarray, threshold: float, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (train row, test row, cosine) with cosine >= ``threshold``: normalised embeddings compared in chunks
    of test rows by matrix products, so memory stays at ``chunk x len(train)`` floats."""
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # noqa: E731
    train, test = unit(np.asarray(train_vectors, np.float32)), unit(np.asarray(test_vectors, np.float32))
    found_train, found_test, found_cos = [], [], []
    for start in range(0, len(test), chunk):
        sims = test[start : start + chunk] @ train.T
        rows, cols = np.nonzero(sims >= threshold)
        found_test.append(rows + start)
        found_train.append(cols)
        found_cos.append(sims[rows, cols])
    if not found_cos:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_train), np.concatenate(found_test), np.concatenate(found_cos)


def near_duplicate_frame(
    train: pd.DataFrame, test: pd.DataFrame, pairs: tuple, text_column: str, label_column: str
) -> pd.DataFrame:
    """near_duplicates.csv: both rows, both labels, the similarity; pairs with different labels first."""
    train_idx, test_idx, cosine = pairs
    source = lambda f, i: f["source_row"].to_numpy()[i] if "source_row" in f.columns else i + 2  # noqa: E731
    frame = pd.DataFrame(
        {
            "train_row": source(train, train_idx),
            "train_split": train["split"].to_numpy()[train_idx] if "split" in train.columns else "train",
            "train_text": train[text_column].to_numpy()[train_idx],
            "train_label": train[label_column].to_numpy()[train_idx],
            "test_row": source(test, test_idx),
            "test_text": test[text_column].to_numpy()[test_idx],
            "test_label": test[label_column].to_numpy()[test_idx],
            "similarity": cosine.astype(np.float64),
        }
    )
    frame["different_labels"] = frame.train_label != frame.test_label
    return frame.sort_values(["different_labels", "similarity"], ascending=[False, False]).reset_index(drop=True)
