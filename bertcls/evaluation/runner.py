"""``evaluate``: score a checkpoint on labelled data, cross-validate its config, write every result file."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from bertcls.config.settings import EvaluationSection, Settings
from bertcls.evaluation.cross_validation import cross_validate
from bertcls.evaluation.multi_label import MultiLabelReport
from bertcls.evaluation.results import (
    CrossValidation,
    CvSummary,
    EvaluationOutcome,
    ResultWriter,
    StageFn,
    TaskReport,
    TrustOutcome,
)
from bertcls.evaluation.single_label import SingleLabelReport
from bertcls.evaluation.tracking import finish_evaluation
from bertcls.evaluation.trust import near_duplicate_frame, near_duplicates
from bertcls.explain.run import explain_errors
from bertcls.features.service import EmbeddingService
from bertcls.inference.scoring import checkpoint_service, score_texts
from bertcls.model.checkpoint import Checkpoint
from bertcls.runtime.errors import DataError
from bertcls.runtime.fileio import write_text_atomic
from bertcls.task import MultiLabel, SingleLabel
from bertcls.tracking.records import exit_status
from bertcls.tracking.session import open_tracker

logger = logging.getLogger(__name__)
REPORTS: dict[str, type[TaskReport]] = {SingleLabel.name: SingleLabelReport, MultiLabel.name: MultiLabelReport}


def run_cv(
    writer: ResultWriter,
    report: TaskReport,
    trained: Settings,
    frame: pd.DataFrame,
    service: EmbeddingService,
    folds: int,
    on_stage: StageFn,
) -> CrossValidation:
    """Cross-validate as the task folds, write fold_K/ folders and cv_metrics.csv; returns the cv table, the
    out-of-fold predictions and probabilities (rows of ``frame``) and the labels of ``frame``."""
    results = cross_validate(trained, frame, service, folds, lambda f, k: on_stage(f"Cross-validation fold {f}/{k}"))
    names = results[0].labels
    truth = report.truth(frame, names)
    texts = frame[trained.data.text_column].tolist()
    fold_metrics, out_of_fold = [], []
    oof = np.zeros((len(frame), len(names)))
    for result in results:
        rows = result.test_index
        fold_truth = report.truth(frame.iloc[rows], names)
        analysis = report.write_analysis(
            writer,
            f"fold_{result.fold}/",
            [texts[i] for i in rows],
            fold_truth,
            result.probs,
            names,
            result.rule,
            full=False,
        )
        fold_metrics.append(analysis.summary)
        out_of_fold.append(analysis.all_predictions.assign(source="cross_validation", fold=result.fold))
        oof[rows] = result.probs
    cv = CvSummary.of(fold_metrics)
    writer.csv("cv_metrics.csv", cv.table)
    return CrossValidation(cv, pd.concat(out_of_fold, ignore_index=True), oof, truth, names)


def write_near_duplicates(
    writer: ResultWriter,
    service: EmbeddingService,
    report: TaskReport,
    reference: pd.DataFrame,
    data: pd.DataFrame,
    threshold: float,
) -> pd.DataFrame:
    text_col = report.data_cfg.text_column
    reference, label_col = report.keyed(reference)
    data, _ = report.keyed(data)
    train_vectors, _ = service.embed(reference[text_col].tolist())
    test_vectors, _ = service.embed(data[text_col].tolist())
    pairs = near_duplicates(train_vectors, test_vectors, threshold)
    frame = near_duplicate_frame(reference, data, pairs, text_col, label_col)
    writer.csv("near_duplicates.csv", frame)
    return frame


def check_request(texts: list[str], cfg: EvaluationSection, folds: int, cv_data: pd.DataFrame | None) -> None:
    """Refuse an evaluation that cannot run: no texts, or label issues without cross-validation."""
    if not texts:
        raise DataError("There are no rows with text to evaluate.")
    if cfg.find_label_issues and (folds < 2 or cv_data is None):
        raise DataError("Finding label issues needs cross-validation; pass --cv-folds 2 or more.")


def evaluate(
    ckpt: Checkpoint,
    data: pd.DataFrame,
    cv_data: pd.DataFrame | None,
    settings_now: Settings,
    folds: int,
    device: torch.device,
    on_stage: StageFn = lambda _: None,
    reference: pd.DataFrame | None = None,
) -> EvaluationOutcome:
    """Score ``data``, cross-validate on ``cv_data`` (if folds > 0), and write ``<output_root>/evaluation_results/``
    with the tables and plots of the checkpoint's task. With ``reference`` (the training and validation rows), list
    near-duplicates between it and ``data``."""
    root, cfg = settings_now.root, settings_now.evaluation
    trained = ckpt.trained_settings(root)
    report = REPORTS[ckpt.task.name](ckpt, trained.data, cfg)
    texts = data[trained.data.text_column].tolist()
    check_request(texts, cfg, folds, cv_data)
    for name, frame in (("the data", data), ("the cross-validation data", cv_data)):
        if frame is not None:
            report.check(frame, name)
    truth, unseen = report.truth(data, ckpt.labels), report.unseen(data)
    tracker = open_tracker(settings_now.tracking, root)  # its process starts while the evaluation runs
    writer = ResultWriter(root)
    try:
        on_stage("Scoring")
        service = checkpoint_service(ckpt, trained, device, settings_now.model.precision)
        probs = score_texts(ckpt, texts, service, root, settings_now.encoder.encode_batch_size)
        on_stage("Writing tables and plots")
        analysis = report.write_analysis(writer, "", texts, truth, probs, ckpt.labels, ckpt.rule, full=True)
        trust = report.write_trust(writer, probs, truth)
        cv, everything = None, [analysis.all_predictions.assign(source="evaluation", fold="")]
        outcome = TrustOutcome(trust.calibration, trust.threshold, trust.risk_coverage is not None)
        if folds > 0 and cv_data is not None:
            validation = run_cv(writer, report, trained, cv_data, service, folds, on_stage)
            cv = validation.summary
            everything.append(validation.predictions)
            if cfg.find_label_issues:
                on_stage("Finding label issues")
                outcome.label_issues = report.write_label_issues(writer, cv_data, validation)
        if reference is not None and len(reference):
            on_stage("Looking for near-duplicates")
            threshold = cfg.near_duplicate_threshold
            outcome.near_duplicates = write_near_duplicates(writer, service, report, reference, data, threshold)
        writer.csv("all_predictions.csv", pd.concat(everything, ignore_index=True))
        if cfg.explain_errors:
            on_stage("Explaining the most confident errors")
            errors = report.errors_to_explain(texts, truth, probs, cfg.explain_errors)
            outcome.explained_errors = explain_errors(ckpt, root, errors, settings_now.explain)
        page = report.page(data, analysis.summary, unseen, cv.table if cv else None, folds, trust, outcome, writer)
        write_text_atomic(writer.staging / "report.html", page)
        files = writer.files()
        folder = writer.commit()
    except BaseException as exc:
        writer.abort()
        tracker.close(exit_status(exc))
        raise
    ece = analysis.ece if analysis.ece is not None else trust.ece
    evaluated = EvaluationOutcome(folder, analysis.summary, len(data), unseen, ece, cv, files, outcome)
    finish_evaluation(ckpt, evaluated, settings_now, tracker)
    return evaluated
