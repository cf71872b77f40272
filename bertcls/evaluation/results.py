"""What every evaluation writes through and hands back: the staging writer, the typed tables, and the interface a
task's evaluation report implements (:mod:`single_label`, :mod:`multi_label`)."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bertcls.config.settings import DataSection, EvaluationSection
from bertcls.model.checkpoint import Checkpoint
from bertcls.runtime.fileio import replace_dir, write_csv_atomic
from bertcls.runtime.formulas import escape_table
from bertcls.runtime.layout import RunLayout
from bertcls.task import DecisionRule

if TYPE_CHECKING:
    from bertcls.explain.outputs import ErrorToExplain

StageFn = Callable[[str], None]


class ResultWriter:
    """Writes into a staging folder that replaces ``evaluation_results/`` in one step at the end."""

    def __init__(self, output_root: Path):
        self.final = RunLayout(output_root).evaluation_dir
        self.staging = RunLayout.staging_for(self.final)
        self.staging.mkdir(parents=True)
        self.plots: list[Path] = []

    def csv(self, name: str, frame: pd.DataFrame, *, index: bool = False) -> None:
        """A table for people: text cells and headers a spreadsheet would run as formulas are escaped."""
        write_csv_atomic(self.staging / name, escape_table(frame.reset_index() if index else frame))

    def plot(self, name: str, draw: Callable[[Path], Path], *, register: bool = True) -> None:
        path = draw(self.staging / name)
        if register:
            self.plots.append(path)

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())

    def commit(self) -> Path:
        return replace_dir(self.staging, self.final)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@dataclass
class Analysis:
    """What the analysis of one set of predictions gives back: all_predictions rows, the summary metrics and, for
    the full analysis of a single-label model, its expected calibration error."""

    all_predictions: pd.DataFrame
    summary: dict[str, float]
    ece: float | None = None


@dataclass
class TrustTables:
    """Calibration (before/after), reliability bins per stage and, for single-label models, risk against coverage
    and the abstention threshold that reaches ``target`` accuracy (None: none does)."""

    calibration: pd.DataFrame
    reliability: dict[str, pd.DataFrame]
    ece: float
    risk_coverage: pd.DataFrame | None = None
    threshold: pd.Series | None = None
    target: float | None = None


@dataclass
class TrustOutcome:
    calibration: pd.DataFrame
    threshold: pd.Series | None
    risk_coverage: bool = False  # whether an abstention threshold was looked for (single-label models)
    label_issues: pd.DataFrame | None = None
    near_duplicates: pd.DataFrame | None = None
    explained_errors: list[ErrorToExplain] = field(default_factory=list)


@dataclass(frozen=True)
class CvSummary:
    """cv_metrics.csv (a row per fold, then mean and std), and the mean and std of each metric over the folds."""

    table: pd.DataFrame
    folds: int
    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def of(cls, fold_metrics: list[dict[str, float]]) -> CvSummary:
        frame = pd.DataFrame(fold_metrics)
        mean = {str(k): float(v) for k, v in frame.mean().items()}
        std = {str(k): float(v) for k, v in frame.std(ddof=1).fillna(0.0).items()}
        table = frame.copy()
        table.insert(0, "fold", [str(i + 1) for i in range(len(frame))])
        table = pd.concat([table, pd.DataFrame([{"fold": "mean", **mean}, {"fold": "std", **std}])], ignore_index=True)
        return cls(table, len(frame), mean, std)


@dataclass
class CrossValidation:
    """cv_metrics, the out-of-fold predictions and probabilities, and the labels of the cross-validated rows."""

    summary: CvSummary
    predictions: pd.DataFrame
    probs: np.ndarray
    truth: Any
    names: list[str]


@dataclass
class EvaluationOutcome:
    folder: Path
    summary: dict[str, float]
    rows: int
    unseen_labels: dict[str, int]
    ece: float
    cv: CvSummary | None = None
    files: list[str] = field(default_factory=list)
    trust: TrustOutcome | None = None


class TaskReport(ABC):
    """The per-task half of ``evaluate``: how true labels are read, which tables and plots an analysis writes, how
    calibration and label issues are measured, what report.html shows. The shared flow is in :mod:`runner`."""

    def __init__(self, ckpt: Checkpoint, data_cfg: DataSection, cfg: EvaluationSection):
        self.ckpt, self.data_cfg, self.cfg = ckpt, data_cfg, cfg

    def check(self, frame: pd.DataFrame, name: str) -> None:  # noqa: B027 - optional hook
        """Refuse labels the task cannot read (nothing by default)."""

    @abstractmethod
    def truth(self, frame: pd.DataFrame, names: list[str]) -> Any:
        """The true labels of ``frame``, as the analysis takes them."""

    @abstractmethod
    def unseen(self, frame: pd.DataFrame) -> dict[str, int]:
        """Labels in ``frame`` the model never saw, with their row counts."""

    @abstractmethod
    def write_analysis(
        self,
        writer: ResultWriter,
        prefix: str,
        texts: list[str],
        truth: Any,
        probs: np.ndarray,
        names: list[str],
        rule: DecisionRule,
        *,
        full: bool,
    ) -> Analysis:
        """``<prefix>predictions.csv`` and, when ``full``, every other table and plot of the analysis."""

    @abstractmethod
    def write_trust(self, writer: ResultWriter, probs: np.ndarray, truth: Any) -> TrustTables:
        """calibration.csv, the reliability diagram (and risk-coverage, where the task has it)."""

    @abstractmethod
    def write_label_issues(self, writer: ResultWriter, cv_data: pd.DataFrame, cv: CrossValidation) -> pd.DataFrame:
        """label_issues.csv from the out-of-fold probabilities."""

    @abstractmethod
    def errors_to_explain(self, texts: list[str], truth: Any, probs: np.ndarray, count: int) -> list[ErrorToExplain]:
        """The ``count`` most confident errors (from the texts and labels as they are, not from the CSV written for
        spreadsheets), as the explanations need them."""

    @abstractmethod
    def keyed(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        """``frame`` with one column naming each row's label (label set), and that column, for near-duplicates."""

    @abstractmethod
    def page(
        self,
        data: pd.DataFrame,
        summary: dict[str, float],
        unseen: dict[str, int],
        cv: pd.DataFrame | None,
        folds: int,
        trust: TrustTables,
        outcome: TrustOutcome,
        writer: ResultWriter,
    ) -> str:
        """report.html."""
