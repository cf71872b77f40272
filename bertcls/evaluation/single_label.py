"""``evaluate`` for a single-label checkpoint: classification report, confusion matrix, error analysis and plots,
calibration with risk against coverage, label issues (cleanlab) and report.html."""

from __future__ import annotations

import html
import logging

import numpy as np
import pandas as pd

from bertcls.evaluation import plots
from bertcls.evaluation.html_report import Section, build_report
from bertcls.evaluation.report_page import KEY_PLOTS, explained_errors_section, headline, short_texts
from bertcls.evaluation.results import Analysis, CrossValidation, ResultWriter, TaskReport, TrustOutcome, TrustTables
from bertcls.evaluation.scoring import (
    classification_report_frame,
    confidence_frame,
    confusion_frame,
    confusion_pairs,
    error_frame,
    error_metrics_frame,
    prediction_frames,
    report_labels,
    summary_metrics,
)
from bertcls.evaluation.trust import (
    calibration_summary,
    label_issues,
    reliability_frame,
    risk_coverage,
    threshold_for,
    truth_indices,
)
from bertcls.explain.outputs import ErrorToExplain
from bertcls.task import DecisionRule
from bertcls.task.calibration import uncalibrate
from bertcls.task.metrics import label_indices

logger = logging.getLogger(__name__)


class SingleLabelReport(TaskReport):
    def truth(self, frame: pd.DataFrame, names: list[str]) -> list[str]:
        return frame[self.data_cfg.label_column].tolist()

    def unseen(self, frame: pd.DataFrame) -> dict[str, int]:
        column = frame[self.data_cfg.label_column]
        return {k: int(v) for k, v in column[~column.isin(self.ckpt.labels)].value_counts().items()}

    def write_analysis(
        self,
        writer: ResultWriter,
        prefix: str,
        texts: list[str],
        truth: list[str],
        probs: np.ndarray,
        names: list[str],
        rule: DecisionRule,
        *,
        full: bool,
    ) -> Analysis:
        """predictions, error analysis and confusion matrix (and, when ``full``, every other table and plot, and the
        expected calibration error over ``evaluation.confidence_bins`` bins, the one ECE bertcls reports)."""
        cfg = self.cfg
        predictions, all_predictions = prediction_frames(texts, truth, probs, names)
        predicted = list(predictions.predicted_label)
        axis = report_labels(names, truth)
        confusion = confusion_frame(truth, predicted, axis)
        writer.csv(f"{prefix}predictions.csv", predictions)
        writer.csv(f"{prefix}error_analysis.csv", error_frame(predictions, probs))
        writer.plot(f"{prefix}confusion_matrix.png", lambda p: plots.confusion_matrix_plot(confusion, p), register=full)
        analysis = Analysis(all_predictions, summary_metrics(truth, predicted, axis))
        if not full:
            return analysis
        report = classification_report_frame(truth, predicted, axis)
        writer.csv("sklearn_classification_report.csv", report)
        writer.csv("confusion_matrix.csv", confusion, index=True)
        correct = (predictions.true_label == predictions.predicted_label).to_numpy()
        calibration, analysis.ece = confidence_frame(predictions.confidence.to_numpy(), correct, cfg.confidence_bins)
        writer.csv("confidence_analysis.csv", calibration)
        writer.csv("error_metrics.csv", error_metrics_frame(predictions, axis, cfg.top_confusions))
        pairs = confusion_pairs(predictions, cfg.top_confusions)
        writer.plot(
            "classification_report_heatmap.png", lambda p: plots.report_heatmap(report[report.label.isin(axis)], p)
        )
        writer.plot("error_confidence_dist.png", lambda p: plots.confidence_plot(predictions, p))
        writer.plot("error_confusion_patterns.png", lambda p: plots.confusion_pairs_plot(pairs, p))
        writer.plot("error_length_dist.png", lambda p: plots.length_plot(predictions, p))
        writer.plot("error_wordclouds.png", lambda p: plots.wordcloud_plot(predictions, axis, p))
        return analysis

    def write_trust(self, writer: ResultWriter, probs: np.ndarray, truth: list[str]) -> TrustTables:
        """calibration.csv, reliability_diagram.png, risk_coverage.csv and .png."""
        cfg, temperature = self.cfg, self.ckpt.temperature
        indices = truth_indices(truth, self.ckpt.labels)
        calibration = calibration_summary(probs, indices, temperature, cfg.confidence_bins)
        writer.csv("calibration.csv", calibration)
        known = indices >= 0
        before = uncalibrate(probs, temperature)[known]
        frames = {
            stage: reliability_frame(p.max(axis=1), p.argmax(axis=1) == indices[known], cfg.confidence_bins)
            for stage, p in (("before calibration", before), ("after calibration", probs[known]))
        }
        writer.plot("reliability_diagram.png", lambda p: plots.reliability_plot(frames, temperature, p))
        curve = risk_coverage(probs, indices)
        writer.csv("risk_coverage.csv", curve)
        best = threshold_for(curve, cfg.target_accuracy)
        writer.plot("risk_coverage.png", lambda p: plots.risk_coverage_plot(curve, cfg.target_accuracy, best, p))
        ece = float(calibration.set_index("calibration").loc["after", "ece"])
        return TrustTables(calibration, frames, ece, curve, best, cfg.target_accuracy)

    def write_label_issues(self, writer: ResultWriter, cv_data: pd.DataFrame, cv: CrossValidation) -> pd.DataFrame:
        text_col, label_col = self.data_cfg.text_column, self.data_cfg.label_column
        given = label_indices(cv_data[label_col], cv.names)
        issues = label_issues(cv_data, cv.probs, given, cv.names, text_col, label_col)
        writer.csv("label_issues.csv", issues)
        logger.info("Confident learning flags %d of %d rows as likely label issues", len(issues), len(cv_data))
        return issues

    def keyed(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        return frame, self.data_cfg.label_column

    def errors_to_explain(
        self, texts: list[str], truth: list[str], probs: np.ndarray, count: int
    ) -> list[ErrorToExplain]:
        names = self.ckpt.labels
        predicted = probs.argmax(axis=1)
        wrong = np.flatnonzero([true != names[k] for true, k in zip(truth, predicted, strict=True)])
        worst = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:count]
        return [
            ErrorToExplain(texts[row], names[predicted[row]], f"Error {number}", truth[row])
            for number, row in enumerate(worst, start=1)
        ]

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
        """What a person reads first (headline numbers, confusion matrix, reliability, risk-coverage), then the
        tables."""
        ckpt = self.ckpt
        staging = writer.staging
        notes = [f"Checkpoint: {ckpt.path}", f"Rows evaluated: {len(data):,}"]
        if unseen:
            listed = ", ".join(f"{k} ({v})" for k, v in unseen.items())
            notes.append(f"Labels the model never saw (scored as errors): {listed}")
        sections = [
            Section("Classification report", pd.read_csv(staging / "sklearn_classification_report.csv")),
            Section("Confusion matrix", pd.read_csv(staging / "confusion_matrix.csv")),
            Section(
                "Calibration",
                trust.calibration,
                text="Expected calibration error and negative log-likelihood on these rows, with the softmax "
                "temperature fitted on the validation split (after) and without it (before).",
            ),
            Section("Reliability bins (calibrated)", trust.reliability["after calibration"]),
        ]
        curve = trust.risk_coverage
        best = trust.threshold
        target = html.escape(f"{trust.target:g}")
        text = (
            f"Abstaining below confidence {best.threshold:.3f} keeps {best.coverage:.1%} of rows at accuracy "
            f"{best.accuracy:.4f} (target {target}); use it with <code>predict --min-confidence</code>."
            if best is not None
            else f"No confidence threshold reaches the target accuracy {target} on these rows."
        )
        sections.append(Section("Risk against coverage", curve, text=text))
        if cv is not None:
            sections.append(Section(f"Cross-validation ({folds} folds)", cv))
        if outcome.label_issues is not None:
            issues = short_texts(outcome.label_issues, ["text"])
            sections.append(
                Section(
                    "Likely label issues",
                    issues.head(200),
                    text=f"{len(issues):,} rows whose given label the out-of-fold predictions of the cross-validation "
                    "find unlikely (confident learning), worst first; all of them in label_issues.csv. Nothing was "
                    "changed: review them, then <code>train --exclude-rows label_issues.csv</code> leaves out the rows "
                    "you keep in that file.",
                    text_columns=["text"],
                )
            )
        if outcome.near_duplicates is not None:
            pairs = short_texts(outcome.near_duplicates, ["train_text", "test_text"])
            sections.append(
                Section(
                    "Near-duplicates between training and test rows",
                    pairs.head(200),
                    text=f"{len(pairs):,} pairs at cosine similarity >= the threshold; pairs with different labels "
                    "first.",
                    text_columns=["train_text", "test_text"],
                )
            )
        errors = pd.read_csv(staging / "error_analysis.csv", dtype={"text": str}, keep_default_na=False)
        sections.append(Section("Most confident errors", short_texts(errors, ["text"]).head(50), text_columns=["text"]))
        if outcome.explained_errors:
            sections.append(explained_errors_section(outcome.explained_errors, self.ckpt.task.score_meaning))
        sections.append(Section("Error metrics", pd.read_csv(staging / "error_metrics.csv")))
        key = [p for name in KEY_PLOTS for p in writer.plots if p.name == name]
        other = [p for p in writer.plots if p not in key]
        cards = headline(summary, trust, outcome)
        return build_report("bertcls evaluation", cards, notes, key, sections, other)
