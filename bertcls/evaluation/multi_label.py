"""``evaluate`` for a multi-label checkpoint: per-label reports, a grid of per-label confusion matrices, label
co-occurrence (true and predicted), per-label errors and word clouds, calibration per label, label issues (cleanlab
``multi_label=True``) and report.html."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bertcls.data.labelsets import check_flag_columns, label_keys, label_matrix, unknown_labels
from bertcls.evaluation import plots
from bertcls.evaluation.html_report import Section, build_report
from bertcls.evaluation.label_set_scoring import (
    calibration_frame,
    cooccurrence,
    label_errors,
    label_report,
    label_set_issues,
    prediction_frames,
    summary_metrics,
    wordcloud_texts,
)
from bertcls.evaluation.report_page import explained_errors_section, short_texts
from bertcls.evaluation.results import Analysis, CrossValidation, ResultWriter, TaskReport, TrustOutcome, TrustTables
from bertcls.evaluation.trust import reliability_frame
from bertcls.explain.outputs import ErrorToExplain
from bertcls.task import DecisionRule
from bertcls.task.calibration import label_decisions, uncalibrate_sigmoid

logger = logging.getLogger(__name__)
KEY_PLOTS = ("label_confusion_matrices.png", "label_cooccurrence.png", "reliability_diagram.png")
LABEL_SET = "label_set"


class MultiLabelReport(TaskReport):
    def check(self, frame: pd.DataFrame, name: str) -> None:
        check_flag_columns(frame, self.data_cfg, name.capitalize())

    def truth(self, frame: pd.DataFrame, names: list[str]) -> np.ndarray:
        return label_matrix(frame, self.data_cfg, names)

    def unseen(self, frame: pd.DataFrame) -> dict[str, int]:
        return unknown_labels(frame, self.data_cfg, self.ckpt.labels)

    def write_analysis(
        self,
        writer: ResultWriter,
        prefix: str,
        texts: list[str],
        truth: np.ndarray,
        probs: np.ndarray,
        names: list[str],
        rule: DecisionRule,
        *,
        full: bool,
    ) -> Analysis:
        """predictions (and, when ``full``, every per-label table and plot, and metrics.csv)."""
        given = self.ckpt.task.decide(probs, rule)
        separator = self.data_cfg.label_separator
        predictions, all_predictions = prediction_frames(texts, truth, given, probs, names, separator)
        writer.csv(f"{prefix}predictions.csv", predictions)
        analysis = Analysis(all_predictions, summary_metrics(truth, given))
        if not full:
            return analysis
        writer.csv("metrics.csv", pd.DataFrame([analysis.summary]))
        temperatures = rule.temperature
        report = label_report(truth, given, probs, names, rule.thresholds, temperatures, self.cfg.confidence_bins)
        writer.csv("per_label_report.csv", report)
        per_label = report.iloc[: len(names)]
        writer.plot("label_confusion_matrices.png", lambda p: plots.label_confusion_grid(per_label, p))
        true_counts, given_counts = cooccurrence(truth, names), cooccurrence(given, names)
        writer.csv("label_cooccurrence_true.csv", true_counts, index=True)
        writer.csv("label_cooccurrence_predicted.csv", given_counts, index=True)
        writer.plot("label_cooccurrence.png", lambda p: plots.cooccurrence_plot(true_counts, given_counts, p))
        writer.plot("classification_report_heatmap.png", lambda p: plots.report_heatmap(per_label, p))
        writer.csv("error_analysis.csv", label_errors(texts, truth, given, probs, names, rule.thresholds))
        clouds = wordcloud_texts(texts, truth, given, names)
        writer.plot("error_wordclouds.png", lambda p: plots.label_wordcloud_plot(clouds, p))
        return analysis

    def write_trust(self, writer: ResultWriter, probs: np.ndarray, truth: np.ndarray) -> TrustTables:
        """calibration.csv (over every label decision) and reliability_diagram.png."""
        bins, temperatures, mean = self.cfg.confidence_bins, self.ckpt.rule.temperature, self.ckpt.temperature
        calibration = calibration_frame(probs, truth, temperatures, mean, bins)
        writer.csv("calibration.csv", calibration)
        frames = {
            stage: reliability_frame(*label_decisions(p, truth), bins)
            for stage, p in (
                ("before calibration", uncalibrate_sigmoid(probs, temperatures)),
                ("after calibration", probs),
            )
        }
        writer.plot("reliability_diagram.png", lambda p: plots.reliability_plot(frames, mean, p))
        ece = float(calibration.set_index("calibration").loc["after", "ece"])
        return TrustTables(calibration, frames, ece)

    def write_label_issues(self, writer: ResultWriter, cv_data: pd.DataFrame, cv: CrossValidation) -> pd.DataFrame:
        cfg = self.data_cfg
        issues = label_set_issues(cv_data, cv.probs, cv.truth, cv.names, cfg.text_column, cfg.label_separator)
        writer.csv("label_issues.csv", issues)
        return issues

    def errors_to_explain(
        self, texts: list[str], truth: np.ndarray, probs: np.ndarray, count: int
    ) -> list[ErrorToExplain]:
        rule, names = self.ckpt.rule, self.ckpt.labels
        given = self.ckpt.task.decide(probs, rule)
        errors = label_errors(texts, truth, given, probs, names, rule.thresholds or [0.5] * len(names)).head(count)
        return [
            ErrorToExplain(row.text, row.label, f"Error {number} ({row.error} of {row.label})")
            for number, row in enumerate(errors.itertuples(), start=1)
        ]

    def keyed(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        return frame.assign(**{LABEL_SET: label_keys(frame, self.data_cfg)}), LABEL_SET

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
        ckpt, staging = self.ckpt, writer.staging
        notes = [f"Checkpoint: {ckpt.path} (multi-label, {len(ckpt.labels)} labels)", f"Rows evaluated: {len(data):,}"]
        if unseen:
            listed = ", ".join(f"{k} ({v})" for k, v in unseen.items())
            notes.append(f"Labels the model never saw (left out of the scores): {listed}")
        calibration = trust.calibration.set_index("calibration")
        cards = {name.replace("_", " "): f"{value:.4f}" for name, value in summary.items()}
        cards["ECE (calibrated, per label decision)"] = f"{calibration.loc['after', 'ece']:.4f}"
        cards["temperature"] = f"{calibration.loc['after', 'temperature']:.3f}"
        if outcome.label_issues is not None:
            cards["likely label issues"] = f"{len(outcome.label_issues):,}"
        if outcome.near_duplicates is not None:
            cards["near-duplicates train/test"] = f"{len(outcome.near_duplicates):,}"
        read = lambda name: pd.read_csv(staging / name)  # noqa: E731
        thresholds_note = "Thresholds were tuned on the validation split."
        sections = [
            Section("Per-label report", read("per_label_report.csv"), text=thresholds_note),
            Section("Calibration", trust.calibration, text="Over every (text, label) decision at 0.5."),
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
        if outcome.explained_errors:
            sections.append(explained_errors_section(outcome.explained_errors, self.ckpt.task.score_meaning))
        key = [p for name in KEY_PLOTS for p in writer.plots if p.name == name]
        other = [p for p in writer.plots if p not in key]
        return build_report("bertcls evaluation (multi-label)", cards, notes, key, sections, other)
