"""One label per text: a softmax over the classes, argmax decisions, one temperature, class-stratified splits."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from bertcls.data.csvlines import csv_lines, row_list
from bertcls.runtime.errors import DataError
from bertcls.task.base import DecisionRule, PredictionColumns, Task, TaskName
from bertcls.task.calibration import CalibrationRecord, ece, fit_temperature, log_softmax, nll
from bertcls.task.metrics import accuracy, categorical_nll, label_indices, macro_f1

if TYPE_CHECKING:
    from bertcls.config.settings import CalibrationSection, DataSection

logger = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "val", "test")


class SingleLabel(Task):
    name: ClassVar[TaskName] = "multiclass"
    title = "single-label"
    merge_policy = "majority"
    default_class_weights = "balanced"  # it lifted SMS spam
    default_head_lr = 1e-3
    blank_description = "empty text or label"
    label_noun = "label"
    min_per_label_in_eval_files = 1  # and so at least two classes
    metric_names: ClassVar[dict[str, str]] = {"accuracy": "accuracy", "f1": "macro F1", "loss": "loss"}
    prediction_metrics = ("accuracy", "f1")
    per_label_thresholds = False

    def label_names(self, train: pd.DataFrame, cfg: DataSection) -> list[str]:
        return sorted(train[cfg.label_column].unique().tolist())

    def encode(self, frame: pd.DataFrame, cfg: DataSection, names: list[str], source: str) -> np.ndarray:
        unseen = sorted(set(frame[cfg.label_column]) - set(names))
        if unseen:
            raise DataError(
                f"The {source} split has label(s) {', '.join(map(repr, unseen))} that the training split lacks."
            )
        return label_indices(frame[cfg.label_column], names)

    def label_keys(self, frame: pd.DataFrame, cfg: DataSection) -> pd.Series:
        return frame[cfg.label_column]

    def blank_rows(self, frame: pd.DataFrame, cfg: DataSection) -> pd.Series:
        return (frame[cfg.text_column].str.strip() == "") | (frame[cfg.label_column].str.strip() == "")

    def check_cells(self, frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
        """Any string is a label."""

    def check_several(self, frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
        """A single-label file cannot look like multi-label data: a cell with a separator is one label."""

    def check_labels(self, frame: pd.DataFrame, cfg: DataSection, source: str, min_per_label: int) -> dict[str, int]:
        counts = frame[cfg.label_column].value_counts()
        if len(counts) < 2:
            raise DataError(f"{source} has {len(counts)} class(es); a classifier needs at least 2.")
        unique_per_class = frame.drop_duplicates(subset=[cfg.text_column])[cfg.label_column].value_counts()
        small = unique_per_class[unique_per_class < min_per_label]
        if len(small):
            listed = ", ".join(f"{k!r} ({v})" for k, v in small.items())
            raise DataError(
                f"{source}: class(es) {listed} have fewer than {min_per_label} distinct texts, too few to split; "
                "add examples or remove the class."
            )
        return {str(k): int(v) for k, v in counts.items()}

    def merge_conflicts(
        self, frame: pd.DataFrame, cfg: DataSection, conflicted: pd.Series, source: str
    ) -> pd.DataFrame:
        """Each conflicting text's rows relabelled to its most frequent label; a tie is an error naming the lines."""
        winners = {}
        for text, group in frame[conflicted].groupby(cfg.text_column, sort=False):
            counts = group[cfg.label_column].value_counts()
            if len(counts) > 1 and counts.iloc[0] == counts.iloc[1]:
                lines = csv_lines(frame, np.flatnonzero((frame[cfg.text_column] == text).to_numpy()))
                raise DataError(
                    f"{source}: text {str(text)[:60]!r} has no majority label (CSV lines {row_list(lines)}); "
                    "fix those rows or set --on-conflicting-labels drop."
                )
            winners[text] = counts.index[0]
        frame = frame.copy()
        frame.loc[conflicted, cfg.label_column] = frame.loc[conflicted, cfg.text_column].map(winners)
        return frame

    def split(self, frame: pd.DataFrame, cfg: DataSection, seed: int) -> dict[str, pd.DataFrame]:
        """Stratified train/val/test split in which identical texts always land in the same split: distinct texts
        are shuffled per class with the seed and cut by the val/test fractions; every row of a text follows it."""
        rng = np.random.default_rng(seed)
        unique = frame.drop_duplicates(subset=[cfg.text_column])
        assignment: dict[str, str] = {}
        for _, group in sorted(unique.groupby(cfg.label_column), key=lambda item: str(item[0])):
            texts = group[cfg.text_column].to_numpy()[rng.permutation(len(group))]
            n_val, n_test = split_counts(len(texts), cfg.val_fraction, cfg.test_fraction)
            assignment.update(dict.fromkeys(texts[:n_test], "test"))
            assignment.update(dict.fromkeys(texts[n_test : n_test + n_val], "val"))
            assignment.update(dict.fromkeys(texts[n_test + n_val :], "train"))
        where = frame[cfg.text_column].map(assignment)
        return {name: frame[where == name].reset_index(drop=True) for name in SPLIT_NAMES}

    def folds(
        self, frame: pd.DataFrame, cfg: DataSection, folds: int, seed: int
    ) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
        check_folds(frame, cfg.text_column, cfg.label_column, folds)
        names = self.label_names(frame, cfg)
        labels = self.encode(frame, cfg, names, "cross-validation")
        groups = pd.factorize(frame[cfg.text_column])[0]
        return names, fold_indices(labels, groups, folds, seed)

    def inner_validation(
        self, train_idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """About 10% of a fold's training rows (grouped by text, stratified) held out for early stopping."""
        n_inner = max(2, min(10, int(np.bincount(labels[train_idx]).min())))
        inner_train, inner_val = fold_indices(labels[train_idx], groups[train_idx], n_inner, seed)[0]
        return train_idx[inner_train], train_idx[inner_val]

    def loss(self, weight: torch.Tensor | None) -> nn.Module:
        return nn.CrossEntropyLoss(weight=weight)

    def balanced_weights(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Inverse class frequency, n / (k * n_c), as scikit-learn's ``class_weight="balanced"``; unseen classes
        get 1."""
        counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
        weights = np.ones(num_classes)
        present = counts > 0
        weights[present] = len(labels) / (num_classes * counts[present])
        return weights

    def default_head(self, *, frozen: bool) -> str:
        return "mlp"

    def probabilities(self, logits: torch.Tensor, temperature: float | np.ndarray) -> torch.Tensor:
        return torch.softmax(logits / float(temperature), dim=-1)

    def loss_units(self, rows: int, num_classes: int) -> int:
        return rows

    def decide(self, probs: np.ndarray, rule: DecisionRule) -> np.ndarray:
        return probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)

    def calibrate(
        self, logits: np.ndarray, labels: np.ndarray, cfg: CalibrationSection, bins: int
    ) -> CalibrationRecord:
        """One temperature fitted on the validation NLL (``calibration.method: temperature``)."""
        if cfg.method == "none" or len(labels) == 0:
            return CalibrationRecord()
        correct = logits.argmax(axis=1) == labels
        if correct.all():
            # with no error to learn from, the likelihood only rises as T falls to its bound (every confidence 1.0)
            logger.info("No validation errors to calibrate against: temperature stays 1")
            return CalibrationRecord(method="temperature", val_rows=len(labels))
        temperature = fit_temperature(logits, labels, nll)
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

    def validation_rule(self, probs: np.ndarray, labels: np.ndarray, rule: DecisionRule) -> DecisionRule:
        return rule

    def score(self, probs: np.ndarray, labels: np.ndarray, num_classes: int, rule: DecisionRule) -> dict[str, float]:
        predicted = self.decide(probs, rule)
        return {
            "loss": categorical_nll(probs, labels),
            "accuracy": accuracy(labels, predicted),
            "f1": macro_f1(labels, predicted, num_classes),
        }

    def guard_classes(self, labels: np.ndarray) -> np.ndarray:
        return labels

    def texts_per_label(self, labels: np.ndarray, names: list[str]) -> dict[str, int]:
        counts = np.bincount(labels, minlength=len(names))
        return {name: int(count) for name, count in zip(names, counts, strict=True)}

    def describe(self, min_labels: int) -> str:
        return "multiclass (one label per text, softmax)"

    coverage_title = "coverage (rows predicted, not abstained)"
    kept_rows = "rows"
    score_meaning = "the label's logit minus the mean of the other labels' logits"

    def score_mix(self, num_classes: int) -> np.ndarray:
        """Each label's logit against the mean of the others' (the softmax is unchanged by a shift of all logits)."""
        others = 1.0 / max(1, num_classes - 1)
        return (1.0 + others) * np.eye(num_classes, dtype=np.float32) - others

    def explained_labels(self, probs: np.ndarray, rule: DecisionRule) -> list[int]:
        return [int(np.argmax(probs))]

    def prediction_columns(
        self,
        probs: np.ndarray,
        names: list[str],
        rule: DecisionRule,
        top_k: int | None,
        min_confidence: float | None,
        separator: str,
    ) -> PredictionColumns:
        """predicted_label, confidence and prob_<label> (or the top K labels). With ``min_confidence``, rows below
        it keep their probabilities but get no label and ``abstained`` true."""
        best = self.decide(probs, rule)
        confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
        labels = np.array(names, dtype=object)
        predicted = labels[best]
        abstain = np.zeros(len(probs), dtype=bool)
        if min_confidence is not None:
            abstain = abstains(confidence, min_confidence)
            predicted[abstain] = ""
        out: dict[str, object] = {"predicted_label": predicted, "confidence": confidence}
        if min_confidence is not None:
            out["abstained"] = np.where(abstain, "true", "false")
        if top_k:
            out.update(top_k_columns(probs, labels, top_k))
        else:
            out.update({f"prob_{label}": probs[:, i] for i, label in enumerate(names)})
        return PredictionColumns(pd.DataFrame(out).astype(object), best, abstain, abstain)

    def read_truth(
        self, chunk: pd.DataFrame, cfg: DataSection, names: list[str], source: str
    ) -> tuple[np.ndarray, dict[str, int]]:
        truth = chunk[cfg.label_column]
        unseen = truth[~truth.isin(names)].value_counts()
        return label_indices(truth, names), {str(k): int(v) for k, v in unseen.items()}

    def decision_scores(self, truth: np.ndarray, given: np.ndarray, num_classes: int) -> dict[str, float]:
        return {"accuracy": accuracy(truth, given), "f1": macro_f1(truth, given, num_classes)}

    def decided_labels(self, columns: PredictionColumns, names: list[str]) -> list[list[str]]:
        rows = zip(columns.given, columns.abstained, strict=True)
        return [[] if abstained else [names[int(best)]] for best, abstained in rows]

    def input_mismatch(self, chunk: pd.DataFrame, cfg: DataSection, names: list[str]) -> str | None:
        """Also: cells that join several of the model's labels (multi-label data given to a single-label model)."""
        known, separator = set(names), cfg.label_separator
        cells = chunk[cfg.label_column]
        joined = [
            cell
            for cell in cells[~cells.isin(known)]
            if separator in cell and all(part.strip() in known for part in cell.split(separator))
        ]
        if joined:
            return (
                f"{len(joined):,} of the input's label cells join several of this model's labels (for example "
                f"{joined[0]!r}): that is multi-label data, but this model is single-label, so those rows count "
                "as errors."
            )
        return super().input_mismatch(chunk, cfg, names)


def abstains(confidence: np.ndarray, min_confidence: float) -> np.ndarray:
    """Rows to leave unlabelled: top probability below ``min_confidence``; at 1, every row (a softmax is never truly
    certain, though float32 rounds large margins to 1.0)."""
    return np.ones(len(confidence), dtype=bool) if min_confidence >= 1.0 else confidence < min_confidence


def top_k_columns(probs: np.ndarray, labels: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """top<r>_label and top<r>_prob for the ``top_k`` most probable labels of each row."""
    order = np.argsort(-probs, axis=1)[:, :top_k]
    out = {}
    for rank in range(top_k):
        out[f"top{rank + 1}_label"] = labels[order[:, rank]]
        out[f"top{rank + 1}_prob"] = probs[np.arange(len(probs)), order[:, rank]]
    return out


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Rows of one class for val and test: rounded shares, at least one each, at least one left to train."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    while n_test + n_val > n - 1 and (n_test > 1 or n_val > 1):
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def check_folds(frame: pd.DataFrame, text_column: str, label_column: str, folds: int) -> None:
    distinct = frame.drop_duplicates(subset=[text_column])[label_column].value_counts()
    small = distinct[distinct < folds]
    if len(small):
        listed = ", ".join(f"{k!r} ({v})" for k, v in small.items())
        raise DataError(
            f"Cross-validation with {folds} folds needs at least {folds} distinct texts per class, but {listed} "
            f"have fewer; use a smaller --cv-folds (at most {int(distinct.min())}) or --cv-folds 0 to skip it."
        )


def fold_indices(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))
