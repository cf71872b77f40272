"""``evaluate`` for a multi-label checkpoint: per-label reports, a grid of per-label confusion matrices, label
co-occurrence (true and predicted), per-label errors and word clouds, calibration per label, cross-validation with
multi-label stratification, label issues (cleanlab ``multi_label=True``) and near-duplicates; report.html."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from bertcls.calibration import label_decisions, uncalibrate_sigmoid
from bertcls.checkpoint import Checkpoint
from bertcls.config import Settings
from bertcls.evaluation import plots
from bertcls.evaluation.cross_validation import cross_validate
from bertcls.evaluation.html_report import Section, build_report
from bertcls.evaluation.multilabel_scoring import (
    calibration_frame,
    cooccurrence,
    label_errors,
    label_report,
    multilabel_label_issues,
    prediction_frames,
    summary_metrics,
    wordcloud_texts,
)
from bertcls.evaluation.report_page import short_texts
from bertcls.evaluation.runner import (
    EvaluationOutcome,
    ResultWriter,
    StageFn,
    TrustOutcome,
    check_request,
    checkpoint_service,
    score_texts,
    write_near_duplicates,
)
from bertcls.evaluation.scoring import cv_summary_frame
from bertcls.evaluation.trust import reliability_frame
from bertcls.fileio import write_text_atomic
from bertcls.labelsets import check_flag_columns, label_keys, label_matrix, unknown_labels
from bertcls.metrics import decide

logger = logging.getLogger(__name__)
KEY_PLOTS = ("label_confusion_matrices.png", "label_cooccurrence.png", "reliability_diagram.png")
LABEL_SET = "label_set"


def write_analysis(writer, prefix, texts, truth, probs, labels, rule, separator, bins, full):
    """predictions (and, when ``full``, every per-label table and plot); returns the predictions, all_predictions
    and the labels given. ``rule``: what holds the decision rule (``thresholds``, ``min_labels``) and, for the
    full analysis, the per-label temperatures (``scaling``)."""
    thresholds = rule.thresholds
    given = decide(probs, thresholds, rule.min_labels)
    predictions, all_predictions = prediction_frames(texts, truth, given, probs, labels, separator)
    writer.csv(f"{prefix}predictions.csv", predictions)
    if not full:
        return predictions, all_predictions, given
    report = label_report(truth, given, probs, labels, thresholds, rule.scaling, bins)
    writer.csv("per_label_report.csv", report)
    per_label = report.iloc[: len(labels)]
    writer.plot("label_confusion_matrices.png", lambda p: plots.label_confusion_grid(per_label, p))
    true_counts, given_counts = cooccurrence(truth, labels), cooccurrence(given, labels)
    writer.csv("label_cooccurrence_true.csv", true_counts, index=True)
    writer.csv("label_cooccurrence_predicted.csv", given_counts, index=True)
    writer.plot("label_cooccurrence.png", lambda p: plots.cooccurrence_plot(true_counts, given_counts, p))
    writer.plot("classification_report_heatmap.png", lambda p: plots.report_heatmap(per_label, p))
    writer.csv("error_analysis.csv", label_errors(texts, truth, given, probs, labels, thresholds))
    clouds = wordcloud_texts(texts, truth, given, labels)
    writer.plot("error_wordclouds.png", lambda p: plots.label_wordcloud_plot(clouds, p))
    return predictions, all_predictions, given


def write_calibration(writer, probs, truth, ckpt: Checkpoint, bins: int) -> dict:
    """calibration.csv (over every label decision) and reliability_diagram.png."""
    temperature = ckpt.scaling
    calibration = calibration_frame(probs, truth, temperature, ckpt.temperature, bins)
    writer.csv("calibration.csv", calibration)
    frames = {
        stage: reliability_frame(*label_decisions(p, truth), bins)
        for stage, p in (("before calibration", uncalibrate_sigmoid(probs, temperature)), ("after calibration", probs))
    }
    writer.plot("reliability_diagram.png", lambda p: plots.reliability_plot(frames, ckpt.temperature, p))
    return {"calibration": calibration, "reliability": frames}


def run_cv(writer, trained: Settings, frame: pd.DataFrame, service, folds: int, on_stage: StageFn, bins: int):
    """Cross-validate with multi-label stratification: fold_K/predictions.csv, cv_metrics.csv; returns the cv
    table, the out-of-fold predictions and probabilities (rows of ``frame``)."""
    dcfg = trained.data
    results = cross_validate(trained, frame, service, folds, lambda f, k: on_stage(f"Cross-validation fold {f}/{k}"))
    names = results[0].labels
    truth_all = label_matrix(frame, dcfg, names)
    fold_metrics, out_of_fold = [], []
    oof = np.zeros((len(frame), len(names)))
    for r in results:
        texts, truth = frame[dcfg.text_column].iloc[r.test_index].tolist(), truth_all[r.test_index]
        _, all_predictions, given = write_analysis(
            writer, f"fold_{r.fold}/", texts, truth, r.probs, names, r, dcfg.label_separator, bins, full=False,
        )  # fmt: skip
        fold_metrics.append(summary_metrics(truth, given))
        out_of_fold.append(all_predictions.assign(source="cross_validation", fold=r.fold))
        oof[r.test_index] = r.probs
    cv = cv_summary_frame(fold_metrics)
    writer.csv("cv_metrics.csv", cv)
    return cv, pd.concat(out_of_fold, ignore_index=True), oof, truth_all, names


def evaluate_multilabel(
    ckpt: Checkpoint,
    data: pd.DataFrame,
    cv_data: pd.DataFrame | None,
    settings_now: Settings,
    folds: int,
    device: torch.device,
    on_stage: StageFn = lambda _: None,
    reference: pd.DataFrame | None = None,
) -> EvaluationOutcome:
    root, cfg = settings_now.root, settings_now.evaluation
    trained = ckpt.trained_settings(root)
    dcfg, labels, bins = trained.data, ckpt.labels, cfg.confidence_bins
    texts = data[dcfg.text_column].tolist()
    check_request(texts, cfg, folds, cv_data)
    for name, frame in (("the data", data), ("the cross-validation data", cv_data)):
        if frame is not None:
            check_flag_columns(frame, dcfg, name.capitalize())
    truth, unseen = label_matrix(data, dcfg, labels), unknown_labels(data, dcfg, labels)
    writer = ResultWriter(root)
    try:
        on_stage("Scoring")
        service = checkpoint_service(ckpt, trained, device, settings_now.model.precision)
        probs = score_texts(ckpt, texts, service, root, settings_now.encoder.encode_batch_size)
        on_stage("Writing tables and plots")
        analysis = (texts, truth, probs, labels, ckpt, dcfg.label_separator, bins)
        _, all_predictions, given = write_analysis(writer, "", *analysis, full=True)
        trust = write_calibration(writer, probs, truth, ckpt, bins)
        summary = summary_metrics(truth, given)
        writer.csv("metrics.csv", pd.DataFrame([summary]))
        cv, everything = None, [all_predictions.assign(source="evaluation", fold="")]
        outcome = TrustOutcome(trust["calibration"], None)
        if folds > 0 and cv_data is not None:
            cv, out_of_fold, oof, cv_truth, names = run_cv(writer, trained, cv_data, service, folds, on_stage, bins)
            everything.append(out_of_fold)
            if cfg.find_label_issues:
                on_stage("Finding label issues")
                issues = multilabel_label_issues(cv_data, oof, cv_truth, names, dcfg.text_column, dcfg.label_separator)
                writer.csv("label_issues.csv", issues)
                outcome.label_issues = issues
        if reference is not None and len(reference):
            on_stage("Looking for near-duplicates")
            keyed = lambda f: f.assign(**{LABEL_SET: label_keys(f, dcfg)})  # noqa: E731
            cols, threshold = (dcfg.text_column, LABEL_SET), cfg.near_duplicate_threshold
            outcome.near_duplicates = write_near_duplicates(
                writer, service, keyed(reference), keyed(data), cols, threshold
            )
        writer.csv("all_predictions.csv", pd.concat(everything, ignore_index=True))
        write_text_atomic(
            writer.staging / "report.html", report_page(ckpt, data, summary, unseen, cv, trust, outcome, writer)
        )
        files = sorted(str(p.relative_to(writer.staging)) for p in writer.staging.rglob("*") if p.is_file())
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    ece = float(trust["calibration"].set_index("calibration").loc["after", "ece"])
    return EvaluationOutcome(folder, summary, len(data), unseen, ece, cv, files, outcome, multilabel=True)


def report_page(ckpt, data, summary, unseen, cv, trust, outcome, writer) -> str:
    staging = writer.staging
    notes = [f"Checkpoint: {ckpt.path} (multi-label, {len(ckpt.labels)} labels)", f"Rows evaluated: {len(data):,}"]
    if unseen:
        notes.append(
            "Labels the model never saw (left out of the scores): " + ", ".join(f"{k} ({v})" for k, v in unseen.items())
        )
    calibration = trust["calibration"].set_index("calibration")
    cards = {name.replace("_", " "): f"{value:.4f}" for name, value in summary.items()}
    cards["ECE (calibrated, per label decision)"] = f"{calibration.loc['after', 'ece']:.4f}"
    cards["temperature"] = f"{calibration.loc['after', 'temperature']:.3f}"
    if outcome.label_issues is not None:
        cards["likely label issues"] = f"{len(outcome.label_issues):,}"
    if outcome.near_duplicates is not None:
        cards["near-duplicates train/test"] = f"{len(outcome.near_duplicates):,}"
    read = lambda name: pd.read_csv(staging / name)  # noqa: E731
    sections = [
        Section(
            "Per-label report", read("per_label_report.csv"), text="Thresholds were tuned on the validation split."
        ),
        Section("Calibration", trust["calibration"], text="Over every (text, label) decision at 0.5."),
        Section("True label co-occurrence", read("label_cooccurrence_true.csv")),
        Section("Predicted label co-occurrence", read("label_cooccurrence_predicted.csv")),
    ]
    if cv is not None:
        sections.append(Section("Cross-validation", cv))
    if outcome.label_issues is not None:
        issues = short_texts(outcome.label_issues.head(200), ["text"])
        sections.append(Section("Likely label issues", issues, text_columns=["text"]))
    if outcome.near_duplicates is not None:
        pairs = short_texts(outcome.near_duplicates.head(200), ["train_text", "test_text"])
        sections.append(Section("Near-duplicates", pairs, text_columns=["train_text", "test_text"]))
    errors = pd.read_csv(staging / "error_analysis.csv", dtype={"text": str}, keep_default_na=False)
    errors = short_texts(errors.head(50), ["text"])
    sections.append(Section("Most confident label errors", errors, text_columns=["text"]))
    key = [p for name in KEY_PLOTS for p in writer.plots if p.name == name]
    other = [p for p in writer.plots if p not in key]
    return build_report("bertcls evaluation (multi-label)", cards, notes, key, sections, other)
