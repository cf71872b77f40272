"""``evaluation_results/summary.json``: what an evaluation measured, tied to the checkpoint it evaluated, for the
model card and the trackers."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bertcls.runtime.fileio import write_text_atomic

logger = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"


class EvaluationSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    checkpoint_created_at: str  # with the path, ties the summary to one checkpoint
    evaluated_at: str = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    rows: int
    metrics: dict[str, float]
    ece: float | None = None
    temperature: float | None = None
    cv_folds: int = 0
    cv_mean: dict[str, float] = Field(default_factory=dict)
    cv_std: dict[str, float] = Field(default_factory=dict)
    target_accuracy: float | None = None  # single-label: the abstention threshold that reaches it, if any
    abstain_below: float | None = None
    coverage: float | None = None
    accuracy_kept: float | None = None
    label_issues: int | None = None

    def describes(self, checkpoint: Path, created_at: str) -> bool:
        return self.checkpoint_created_at == created_at and Path(self.checkpoint).name == checkpoint.name


def write_summary(folder: Path, summary: EvaluationSummary) -> Path:
    return write_text_atomic(folder / SUMMARY_FILE, json.dumps(summary.model_dump(mode="json"), indent=2))


def read_summary(folder: Path) -> EvaluationSummary | None:
    """The summary in an evaluation folder, None if there is none (or it cannot be read: said in the log)."""
    path = folder / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return EvaluationSummary.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        logger.warning("Ignoring %s: %s", path, str(exc).splitlines()[0])
        return None
