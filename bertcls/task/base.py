"""What differs between single-label and multi-label classification, behind one interface.

A :class:`Task` decides how labels are read and encoded, which rows are blank and how conflicting labels merge,
how data is split and folded, the loss and its weights, how logits become probabilities and probabilities become
decisions, how calibration fits, and how predictions are scored. Everything else in bertcls asks the task instead of
branching on it; a new kind of task is one new subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from bertcls.config.settings import TaskName

if TYPE_CHECKING:
    from bertcls.config.settings import CalibrationSection, DataSection
    from bertcls.task.calibration import CalibrationRecord


@dataclass
class PredictionColumns:
    """What a task writes for a chunk of predictions: its output columns, the decisions as they count in scores
    (unsure labels left out under ``--min-confidence``), which rows abstained, and which decisions were unsure (one
    per row, or one per row and label)."""

    frame: pd.DataFrame
    given: np.ndarray
    abstained: np.ndarray
    unsure: np.ndarray

    def kept(self, rows: np.ndarray) -> PredictionColumns:
        """The same for some rows only."""
        return PredictionColumns(self.frame[rows], self.given[rows], self.abstained[rows], self.unsure[rows])


@dataclass(frozen=True)
class DecisionRule:
    """What turns a model's logits into decisions: the temperature the logits are divided by (one number, or one
    per label), the per-label thresholds (tasks that give several labels) and ``min_labels`` (1: a text no label
    reaches gets its most probable one)."""

    temperature: float | np.ndarray = 1.0
    thresholds: tuple[float, ...] | None = None
    min_labels: int = 0

    @classmethod
    def calibrated(cls, record: CalibrationRecord, min_labels: int = 0) -> DecisionRule:
        """The rule a calibration record describes: its temperature (one per label where it fitted several) and
        its per-label thresholds."""
        temperature = np.asarray(record.temperatures, dtype=np.float32) if record.temperatures else record.temperature
        thresholds = None if record.thresholds is None else tuple(record.thresholds)
        return cls(temperature, thresholds, min_labels)

    def with_calibration(self, temperature: float | np.ndarray, thresholds: list[float] | None) -> DecisionRule:
        return replace(self, temperature=temperature, thresholds=None if thresholds is None else tuple(thresholds))


class Task(ABC):
    """One kind of classification task. Instances hold no state; compare them by ``name``."""

    name: ClassVar[TaskName]
    title: ClassVar[str]  # how messages name it: "single-label", "multi-label"
    merge_policy: ClassVar[str]  # the data.on_conflicting_labels value that merges conflicting labels
    default_class_weights: ClassVar[str]
    default_head_lr: ClassVar[float]
    metric_names: ClassVar[dict[str, str]]  # metric key -> column title, in display order
    prediction_metrics: ClassVar[tuple[str, ...]]  # what predict reports on labelled input
    per_label_thresholds: ClassVar[bool]  # whether decisions cut each label's probability at its own threshold
    label_noun: ClassVar[str]  # what one text carries: "label", "label set"
    min_per_label_in_eval_files: ClassVar[int]  # distinct texts each label needs in explicit val and test files

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return type(self).__name__ + "()"

    # --- labels ---------------------------------------------------------------------------------------------
    @abstractmethod
    def label_names(self, train: pd.DataFrame, cfg: DataSection) -> list[str]:
        """The labels a model trained on ``train`` knows, sorted."""

    @abstractmethod
    def encode(self, frame: pd.DataFrame, cfg: DataSection, names: list[str], source: str) -> np.ndarray:
        """The labels of ``frame`` as the loss takes them; a label outside ``names`` is an error naming ``source``."""

    @abstractmethod
    def label_keys(self, frame: pd.DataFrame, cfg: DataSection) -> pd.Series:
        """One string per row naming its label (label set), for comparing rows and hashing data."""

    # --- data checks and splits -----------------------------------------------------------------------------
    @abstractmethod
    def blank_rows(self, frame: pd.DataFrame, cfg: DataSection) -> pd.Series:
        """Rows a data check refuses as blank."""

    blank_description: ClassVar[str]

    @abstractmethod
    def check_cells(self, frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
        """Refuse label cells the task cannot read, before any row is dropped or merged."""

    @abstractmethod
    def check_several(self, frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
        """Refuse a training file that looks like another task's data."""

    @abstractmethod
    def check_labels(self, frame: pd.DataFrame, cfg: DataSection, source: str, min_per_label: int) -> dict[str, int]:
        """Check how many texts each label has; returns texts per label."""

    @abstractmethod
    def merge_conflicts(
        self, frame: pd.DataFrame, cfg: DataSection, conflicted: pd.Series, source: str
    ) -> pd.DataFrame:
        """``frame`` with the conflicting rows given one merged label (label set)."""

    @abstractmethod
    def split(self, frame: pd.DataFrame, cfg: DataSection, seed: int) -> dict[str, pd.DataFrame]:
        """train / val / test, every row of a text in the same part."""

    @abstractmethod
    def folds(
        self, frame: pd.DataFrame, cfg: DataSection, folds: int, seed: int
    ) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
        """The labels of ``frame`` and K (train, test) row-index pairs, identical texts in one fold."""

    @abstractmethod
    def inner_validation(
        self, train_idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """A fold's training rows split into rows to train on and about 10% to stop early on."""

    # --- the model ------------------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, weight: torch.Tensor | None) -> nn.Module:
        """The training loss over logits and encoded labels."""

    @abstractmethod
    def balanced_weights(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """What ``classifier.class_weights: balanced`` weighs the loss with."""

    def init_output(self, bias: torch.Tensor, labels: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Set the output layer's biases before training (nothing by default)."""

    @abstractmethod
    def default_head(self, *, frozen: bool) -> str:
        """The head ``classifier.head: auto`` picks: ``mlp`` or ``linear``."""

    @abstractmethod
    def probabilities(self, logits: torch.Tensor, temperature: float | np.ndarray) -> torch.Tensor:
        """Probabilities of logits divided by the temperature."""

    @abstractmethod
    def loss_units(self, rows: int, num_classes: int) -> int:
        """How many terms the mean loss averages over (rows, or rows times labels)."""

    # --- decisions, calibration and scores ------------------------------------------------------------------
    @abstractmethod
    def decide(self, probs: np.ndarray, rule: DecisionRule) -> np.ndarray:
        """The decisions: class indices, or a boolean matrix of the labels given."""

    def calibrates(self, cfg: CalibrationSection) -> bool:
        """Whether calibration fits anything under ``cfg`` (else the validation logits are not computed)."""
        return cfg.method != "none"

    @abstractmethod
    def calibrate(
        self, logits: np.ndarray, labels: np.ndarray, cfg: CalibrationSection, bins: int
    ) -> CalibrationRecord:
        """Fit the calibration (and decision thresholds) on validation logits."""

    @abstractmethod
    def validation_rule(self, probs: np.ndarray, labels: np.ndarray, rule: DecisionRule) -> DecisionRule:
        """The rule a finished model would use on these validation probabilities (scored after every epoch)."""

    @abstractmethod
    def score(self, probs: np.ndarray, labels: np.ndarray, num_classes: int, rule: DecisionRule) -> dict[str, float]:
        """Loss and metrics (``f1``, ``accuracy`` and the task's own) of ``probs`` against encoded labels."""

    @abstractmethod
    def guard_classes(self, labels: np.ndarray) -> np.ndarray:
        """One class index per row, for the precision guard's class means."""

    @abstractmethod
    def texts_per_label(self, labels: np.ndarray, names: list[str]) -> dict[str, int]:
        """How many texts carry each label (``labels`` as :meth:`encode` gives them)."""

    # --- prediction files -----------------------------------------------------------------------------------
    coverage_title: ClassVar[str]  # what --min-confidence's coverage counts
    kept_rows: ClassVar[str]  # what the rows it keeps are

    @abstractmethod
    def prediction_columns(
        self,
        probs: np.ndarray,
        names: list[str],
        rule: DecisionRule,
        top_k: int | None,
        min_confidence: float | None,
        separator: str,
    ) -> PredictionColumns:
        """The output columns of ``predict`` for these probabilities."""

    @abstractmethod
    def read_truth(
        self, chunk: pd.DataFrame, cfg: DataSection, names: list[str], source: str
    ) -> tuple[np.ndarray, dict[str, int]]:
        """The labels of labelled input rows as :meth:`decision_scores` takes them, and how many rows carry each label
        the model never saw (an error for one label per text; left out of a label set)."""

    @abstractmethod
    def decided_labels(self, columns: PredictionColumns, names: list[str]) -> list[list[str]]:
        """Per row, the labels :meth:`prediction_columns` gave (none for a row that abstained), for the server."""

    def given_labels(self, chunk: pd.DataFrame, cfg: DataSection) -> list[str]:
        """Every label the input's label cells name, in order (a cell is one label here)."""
        return [cell for cell in chunk[cfg.label_column] if cell.strip()]

    def input_mismatch(self, chunk: pd.DataFrame, cfg: DataSection, names: list[str]) -> str | None:
        """A sentence when labelled input looks made for another model (none of its labels is the model's), or
        None when it fits."""
        given = self.given_labels(chunk, cfg)
        if given and not set(given) & set(names):
            return (
                f"None of the input's labels is one of this model's (for example {given[0]!r}): the input looks "
                "made for another model, so the scores below say little about this one."
            )
        return None

    @abstractmethod
    def decision_scores(self, truth: np.ndarray, given: np.ndarray, num_classes: int) -> dict[str, float]:
        """Metrics of decisions against :meth:`read_truth`'s labels."""

    @abstractmethod
    def describe(self, min_labels: int) -> str:
        """One line for ``inspect``."""

    # --- explanations ---------------------------------------------------------------------------------------
    score_meaning: ClassVar[str]  # what an explanation attributes, in words

    @abstractmethod
    def score_mix(self, num_classes: int) -> np.ndarray:
        """The scores an explanation attributes, as a matrix on the logits: ``scores = logits @ mix``."""

    @abstractmethod
    def explained_labels(self, probs: np.ndarray, rule: DecisionRule) -> list[int]:
        """The labels an explanation of one text covers by default (``probs``: that text's probabilities)."""
