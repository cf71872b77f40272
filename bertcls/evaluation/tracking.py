"""What ``evaluate`` leaves beside its tables: ``summary.json``, the model card brought up to date, and the
evaluation in the trackers (on the model's own run when the checkpoint names one)."""

from __future__ import annotations

import logging
from pathlib import Path

from bertcls.config.settings import Settings
from bertcls.evaluation.results import EvaluationOutcome
from bertcls.evaluation.summary import EvaluationSummary, write_summary
from bertcls.model.card import write_model_card
from bertcls.model.checkpoint import Checkpoint
from bertcls.runtime.layout import RunLayout
from bertcls.tracking.records import RunSpec, finite_metrics, flatten, run_name
from bertcls.tracking.session import Tracker

logger = logging.getLogger(__name__)


def summarize(ckpt: Checkpoint, outcome: EvaluationOutcome, target_accuracy: float) -> EvaluationSummary:
    trust, cv = outcome.trust, outcome.cv
    threshold = trust.threshold if trust is not None else None
    temperature = None
    if trust is not None and "temperature" in trust.calibration:
        temperature = float(trust.calibration["temperature"].iloc[-1])
    return EvaluationSummary(
        checkpoint=str(ckpt.path.absolute()),
        checkpoint_created_at=ckpt.meta.created_at,
        rows=outcome.rows,
        metrics=finite_metrics(outcome.summary),
        ece=outcome.ece,
        temperature=temperature,
        cv_folds=cv.folds if cv is not None else 0,
        cv_mean=finite_metrics(cv.mean) if cv is not None else {},
        cv_std=finite_metrics(cv.std) if cv is not None else {},
        target_accuracy=target_accuracy if trust is not None and trust.risk_coverage else None,
        abstain_below=float(threshold.threshold) if threshold is not None else None,
        coverage=float(threshold.coverage) if threshold is not None else None,
        accuracy_kept=float(threshold.accuracy) if threshold is not None else None,
        label_issues=len(trust.label_issues) if trust is not None and trust.label_issues is not None else None,
    )


def refresh_card(ckpt: Checkpoint, root: Path, summary: EvaluationSummary) -> None:
    """The model card beside ``best_model.pt`` gains the evaluation (other checkpoints have no card of their own)."""
    layout = RunLayout(root)
    if ckpt.path.absolute() != layout.best_model.absolute():
        return
    try:
        write_model_card(layout.model_card, ckpt.meta, root.absolute().name, summary)
    except OSError as exc:  # a read-only model folder: the evaluation itself is written
        logger.warning("Could not update the model card beside %s: %s", ckpt.path, exc)


def finish_evaluation(
    ckpt: Checkpoint, outcome: EvaluationOutcome, settings: Settings, tracker: Tracker
) -> EvaluationSummary:
    """summary.json, the model card, and the trackers."""
    summary = summarize(ckpt, outcome, settings.evaluation.target_accuracy)
    write_summary(outcome.folder, summary)
    outcome.files = sorted({*outcome.files, "summary.json"})
    refresh_card(ckpt, settings.root, summary)
    track_evaluation(ckpt, outcome, summary, settings, tracker)
    return summary


def track_evaluation(
    ckpt: Checkpoint, outcome: EvaluationOutcome, summary: EvaluationSummary, settings: Settings, tracker: Tracker
) -> None:
    """Metrics (``eval_*``; cross-validation folds as steps of ``cv_*``) and the result files, on the model's run when
    the tracker still has it, on a new run otherwise."""
    if not tracker.enabled:
        return
    name = run_name("evaluate", settings.tracking.run_name)
    params = flatten({"evaluation": settings.evaluation.model_dump(mode="json"), "checkpoint": str(ckpt.path)})
    tags = {"bertcls.evaluated": summary.evaluated_at, "bertcls.evaluated_checkpoint": str(ckpt.path.absolute())}
    run = tracker.start_run(RunSpec(name, name, params, tags, attach_to=ckpt.meta.tracking))
    run.log_metrics(finite_metrics(summary.metrics, "eval_"))
    extra = {"ece": summary.ece, "abstain_below": summary.abstain_below, "coverage": summary.coverage}
    run.log_metrics(finite_metrics(extra, "eval_"))
    if outcome.cv is not None:
        for fold, values in enumerate(outcome.cv.table.drop(columns="fold").to_dict("records")[: outcome.cv.folds]):
            run.log_metrics(finite_metrics(values, "cv_"), fold + 1)
        run.log_metrics(finite_metrics(outcome.cv.mean, "cv_mean_") | finite_metrics(outcome.cv.std, "cv_std_"))
    run.log_artifacts(outcome.folder, "evaluation")
    run.end()
    tracker.close()
