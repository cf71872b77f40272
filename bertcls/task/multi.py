"""Any number of labels per text: a sigmoid per label, per-label temperatures and thresholds (plus ``min_labels``),
label sets read from a separated column or 0/1 columns, iterative stratification for splits and folds."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from bertcls.data.labelsets import (
    check_flag_columns,
    check_label_counts,
    check_separator_used,
    fold_parts,
    grouped_parts,
    label_keys,
    label_matrix,
    label_sets,
    names_of,
    split_label_sets,
    unknown_labels,
)
from bertcls.runtime.errors import DataError
from bertcls.task.base import DecisionRule, PredictionColumns, Task, TaskName
from bertcls.task.calibration import CalibrationRecord, binary_nll, ece, fit_temperature, label_decisions, sigmoid
from bertcls.task.metrics import binary_log_loss, label_set_scores, tune_thresholds
from bertcls.task.single import top_k_columns

if TYPE_CHECKING:
    from bertcls.config.settings import CalibrationSection, DataSection

logger = logging.getLogger(__name__)


class MultiLabel(Task):
    name: ClassVar[TaskName] = "multilabel"
    title = "multi-label"
    merge_policy = "union"
    # a per-label pos_weight cost 1.5 macro-F1 points on GoEmotions with every split seed tried
    default_class_weights = "none"
    # fine-tuning on GoEmotions for 3 epochs reached 0.403 test macro F1 at 1e-2 against 0.336 at 1e-3
    default_head_lr = 1e-2
    blank_description = "empty text"
    label_noun = "label set"
    min_per_label_in_eval_files = 0  # rare labels may be missing from a small file
    metric_names: ClassVar[dict[str, str]] = {
        "f1": "macro F1",
        "micro_f1": "micro F1",
        "samples_f1": "samples F1",
        "accuracy": "subset accuracy",
        "hamming_loss": "Hamming loss",
        "loss": "loss",
    }
    prediction_metrics = ("f1", "micro_f1", "samples_f1", "accuracy")
    per_label_thresholds = True

    def label_names(self, train: pd.DataFrame, cfg: DataSection) -> list[str]:
        return names_of(train, cfg)

    def encode(self, frame: pd.DataFrame, cfg: DataSection, names: list[str], source: str) -> np.ndarray:
        unseen = unknown_labels(frame, cfg, names)
        if unseen:
            raise DataError(
                f"The {source} split has label(s) {', '.join(map(repr, sorted(unseen)))} that the training split lacks."
            )
        return label_matrix(frame, cfg, names)

    def label_keys(self, frame: pd.DataFrame, cfg: DataSection) -> pd.Series:
        return label_keys(frame, cfg)

    def blank_rows(self, frame: pd.DataFrame, cfg: DataSection) -> pd.Series:
        return frame[cfg.text_column].str.strip() == ""  # an empty label cell means no label

    def check_cells(self, frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
        check_flag_columns(frame, cfg, source)

    def check_several(self, frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
        check_separator_used(frame, cfg, source)

    def check_labels(self, frame: pd.DataFrame, cfg: DataSection, source: str, min_per_label: int) -> dict[str, int]:
        return check_label_counts(frame, cfg, source, min_per_label)

    def calibrates(self, cfg: CalibrationSection) -> bool:
        return True  # the per-label thresholds are tuned whether or not temperatures are fitted

    def merge_conflicts(
        self, frame: pd.DataFrame, cfg: DataSection, conflicted: pd.Series, source: str
    ) -> pd.DataFrame:
        """Every row of a conflicting text given the union of that text's label sets (either input form)."""
        sets = pd.Series(label_sets(frame, cfg), index=frame.index)
        unions = (
            sets[conflicted]
            .groupby(frame.loc[conflicted, cfg.text_column])
            .agg(lambda parts: tuple(sorted(set().union(*parts))))
        )
        merged = frame.loc[conflicted, cfg.text_column].map(unions)
        frame = frame.copy()
        if cfg.label_columns:
            for column in cfg.label_columns:
                frame.loc[conflicted, column] = merged.map(lambda labels, c=column: "1" if c in labels else "0")
        else:
            frame.loc[conflicted, cfg.label_column] = merged.map(cfg.label_separator.join)
        return frame

    def split(self, frame: pd.DataFrame, cfg: DataSection, seed: int) -> dict[str, pd.DataFrame]:
        return split_label_sets(frame, cfg, seed)

    def folds(
        self, frame: pd.DataFrame, cfg: DataSection, folds: int, seed: int
    ) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
        distinct = frame[cfg.text_column].nunique()
        if distinct < folds:
            raise DataError(
                f"Cross-validation with {folds} folds needs at least {folds} distinct texts; there are "
                f"{distinct}. Use a smaller --cv-folds or --cv-folds 0 to skip it."
            )
        names = names_of(frame, cfg)
        labels = label_matrix(frame, cfg, names)
        groups = pd.factorize(frame[cfg.text_column])[0]
        warn_rare_labels(labels, groups, names, folds)
        return names, fold_parts(labels, groups, folds, seed)

    def inner_validation(
        self, train_idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """About 10% of a fold's training rows (grouped by text) by iterative stratification, for early stopping."""
        inner = grouped_parts(labels[train_idx], groups[train_idx], [0.9, 0.1], seed)
        return train_idx[inner == 0], train_idx[inner == 1]

    def loss(self, weight: torch.Tensor | None) -> nn.Module:
        return nn.BCEWithLogitsLoss(pos_weight=weight)  # weight: each label's weight of its positive texts

    def balanced_weights(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Each label's negatives per positive (``pos_weight`` of the binary cross-entropy), so a label's positive
        and negative texts weigh the same in total; a label without positives gets 1."""
        positives = labels.sum(axis=0).astype(np.float64)
        weights = np.ones(labels.shape[1])
        present = positives > 0
        weights[present] = (len(labels) - positives[present]) / positives[present]
        return weights

    def init_output(self, bias: torch.Tensor, labels: np.ndarray) -> None:
        """The output biases start at each label's log-odds in the training split (as RetinaNet's prior
        initialisation), not at 0 (probability 0.5 for every label): with rare labels the head otherwise spends
        its first epochs only learning how rare they are."""
        prior = np.clip(labels.mean(axis=0), 1e-4, 1 - 1e-4)
        with torch.no_grad():
            bias.copy_(torch.as_tensor(np.log(prior / (1 - prior)), dtype=bias.dtype))

    def default_head(self, *, frozen: bool) -> str:
        """A linear head fitted to convergence (L-BFGS) on a frozen encoder, where it beat the MLP head by 5
        macro-F1 points on GoEmotions; the MLP head when fine-tuning."""
        return "linear" if frozen else "mlp"

    def probabilities(self, logits: torch.Tensor, temperature: float | np.ndarray) -> torch.Tensor:
        return torch.sigmoid(logits / torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device))

    def loss_units(self, rows: int, num_classes: int) -> int:
        return rows * num_classes

    def decide(self, probs: np.ndarray, rule: DecisionRule) -> np.ndarray:
        """The labels given (a boolean matrix): probability >= the label's threshold; with ``min_labels`` 1 a row
        no label reaches gets its most probable label."""
        cut = np.full(probs.shape[1], 0.5) if rule.thresholds is None else np.asarray(rule.thresholds, np.float64)
        given = probs >= cut
        if rule.min_labels and len(probs):
            empty = ~given.any(axis=1)
            given[np.flatnonzero(empty), probs[empty].argmax(axis=1)] = True
        return given

    def calibrate(
        self, logits: np.ndarray, labels: np.ndarray, cfg: CalibrationSection, bins: int
    ) -> CalibrationRecord:
        """A temperature per label (``calibration.method: temperature``), then per-label thresholds on the
        calibrated validation probabilities."""
        if len(labels) == 0:
            return CalibrationRecord(thresholds=[0.5] * logits.shape[1])
        fitted = cfg.method == "temperature"
        temperatures = label_temperatures(logits, labels) if fitted else np.ones(labels.shape[1])
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
        logger.info(
            "%d per-label temperatures and thresholds fitted on %d validation rows", len(thresholds), len(labels)
        )
        return record

    def validation_rule(self, probs: np.ndarray, labels: np.ndarray, rule: DecisionRule) -> DecisionRule:
        """Scored with the per-label thresholds that suit these probabilities best, as the finished model will be."""
        return rule.with_calibration(rule.temperature, [float(t) for t in tune_thresholds(probs, labels)])

    def score(self, probs: np.ndarray, labels: np.ndarray, num_classes: int, rule: DecisionRule) -> dict[str, float]:
        """Binary cross-entropy, subset accuracy, macro/micro/samples F1 and Hamming loss of the labels given."""
        loss = binary_log_loss(probs, labels) if len(labels) else 0.0
        return {"loss": loss, **label_set_scores(labels, self.decide(probs, rule))}

    def guard_classes(self, labels: np.ndarray) -> np.ndarray:
        """Each text's first label (no label: a class of its own)."""
        return np.where(labels.any(axis=1), labels.argmax(axis=1), labels.shape[1])

    def texts_per_label(self, labels: np.ndarray, names: list[str]) -> dict[str, int]:
        return {name: int(count) for name, count in zip(names, labels.sum(axis=0), strict=True)}

    def describe(self, min_labels: int) -> str:
        at_least = ", at least one label per text" if min_labels else ""
        return f"multilabel (a sigmoid per label, a threshold per label tuned on validation{at_least})"

    coverage_title = "label decisions sure enough"
    kept_rows = "rows without an unsure label"
    score_meaning = "the label's logit (each label has its own sigmoid)"

    def score_mix(self, num_classes: int) -> np.ndarray:
        return np.eye(num_classes, dtype=np.float32)

    def explained_labels(self, probs: np.ndarray, rule: DecisionRule) -> list[int]:
        """The labels given, or the most probable one when none is."""
        given = np.flatnonzero(self.decide(probs[None, :], rule)[0])
        return given.tolist() if len(given) else [int(np.argmax(probs))]

    def prediction_columns(
        self,
        probs: np.ndarray,
        names: list[str],
        rule: DecisionRule,
        top_k: int | None,
        min_confidence: float | None,
        separator: str,
    ) -> PredictionColumns:
        """predicted_labels (joined by the separator), prob_<label> for every label and, with ``top_k``, the k most
        probable labels. With ``min_confidence``, unsure labels are left out of predicted_labels and named in
        unsure_labels, and abstained says whether the row has any."""
        given = self.decide(probs, rule)
        unsure = np.zeros_like(given, dtype=bool)
        if min_confidence is not None:
            unsure = unsure_labels(probs, given, min_confidence)
        labels = np.array(names, dtype=object)
        join = lambda mask: [separator.join(labels[row]) for row in mask]  # noqa: E731
        kept = given & ~unsure
        out: dict[str, object] = {"predicted_labels": join(kept)}
        if min_confidence is not None:
            out["unsure_labels"] = join(unsure)
            out["abstained"] = np.where(unsure.any(axis=1), "true", "false")
        out.update({f"prob_{label}": probs[:, i] for i, label in enumerate(names)})
        if top_k:
            out.update(top_k_columns(probs, labels, top_k))
        frame = pd.DataFrame(out).astype(object)
        return PredictionColumns(frame, kept, np.asarray(unsure.any(axis=1)), unsure)

    def read_truth(
        self, chunk: pd.DataFrame, cfg: DataSection, names: list[str], source: str
    ) -> tuple[np.ndarray, dict[str, int]]:
        check_flag_columns(chunk, cfg, source)
        return label_matrix(chunk, cfg, names), unknown_labels(chunk, cfg, names)

    def decision_scores(self, truth: np.ndarray, given: np.ndarray, num_classes: int) -> dict[str, float]:
        return label_set_scores(truth, given)

    def decided_labels(self, columns: PredictionColumns, names: list[str]) -> list[list[str]]:
        return [[names[int(k)] for k in np.flatnonzero(row)] for row in columns.given]

    def given_labels(self, chunk: pd.DataFrame, cfg: DataSection) -> list[str]:
        """The labels the cells join (none to check for 0/1 columns, whose names are the model's labels)."""
        if cfg.label_columns:
            return []
        cells = chunk[cfg.label_column]
        return [part.strip() for cell in cells for part in cell.split(cfg.label_separator) if part.strip()]


def unsure_labels(probs: np.ndarray, given: np.ndarray, min_confidence: float) -> np.ndarray:
    """A label decision is unsure when the probability of what was decided (p for a label given, 1 - p for one not
    given) is below ``min_confidence`` (at 1, every decision)."""
    if min_confidence >= 1.0:
        return np.ones_like(given, dtype=bool)
    return np.where(given, probs, 1.0 - probs) < min_confidence


def label_temperatures(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One temperature per label, each fitted on that label's binary NLL; a label decided right on every
    validation row keeps 1 (its likelihood would only rise as T fell to the bound)."""
    temperatures = np.ones(labels.shape[1])
    for k in range(labels.shape[1]):
        column, truth = logits[:, [k]], labels[:, [k]]
        if not label_decisions(sigmoid(column), truth)[1].all():
            temperatures[k] = fit_temperature(column, truth, binary_nll)
    return temperatures


def warn_rare_labels(matrix: np.ndarray, groups: np.ndarray, names: list[str], folds: int) -> None:
    """A label with fewer distinct texts than folds is missing from some folds (not an error: rare labels are
    common in multi-label data)."""
    counts = matrix[np.unique(groups, return_index=True)[1]].sum(axis=0)
    rare = [f"{names[k]!r} ({int(counts[k])})" for k in np.flatnonzero(counts < folds)]
    if rare:
        logger.warning(
            "Label(s) %s have fewer texts than the %d folds; some folds test without them.", ", ".join(rare), folds
        )
