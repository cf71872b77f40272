"""``evaluate``: score a checkpoint on labelled data, cross-validate its config, write every result file."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bertcls.batches import predict_embedded
from bertcls.calibration import uncalibrate
from bertcls.checkpoint import Checkpoint, build_classifier
from bertcls.config import EvaluationSection, Settings
from bertcls.errors import CheckpointError, DataError
from bertcls.evaluation import plots
from bertcls.evaluation.cross_validation import FoldResult, cross_validate
from bertcls.evaluation.report_page import report_page
from bertcls.evaluation.scoring import (
    classification_report_frame,
    confidence_frame,
    confusion_frame,
    confusion_pairs,
    cv_summary_frame,
    error_frame,
    error_metrics_frame,
    prediction_frames,
    report_labels,
    summary_metrics,
)
from bertcls.evaluation.trust import (
    calibration_summary,
    label_issues,
    near_duplicate_frame,
    near_duplicates,
    reliability_frame,
    risk_coverage,
    threshold_for,
    truth_indices,
)
from bertcls.features import EmbeddingService
from bertcls.fileio import replace_dir, write_csv_atomic, write_text_atomic
from bertcls.layout import RunLayout
from bertcls.precision import for_checkpoint, sample_indices
from bertcls.prediction import Predictor, model_labeller

logger = logging.getLogger(__name__)
StageFn = Callable[[str], None]


def checkpoint_service(
    ckpt: Checkpoint, trained: Settings, device: torch.device, precision: str = "fp32"
) -> EmbeddingService:
    """The encoder service of the checkpoint's config, at the precision to run it at (see
    :func:`~bertcls.precision.for_checkpoint`); a frozen checkpoint refuses an encoder whose fingerprint changed."""
    precision, unchecked = for_checkpoint(ckpt.meta.precision, precision, device)
    service = EmbeddingService(trained.encoder, trained.model.max_seq_len, trained.root, device, precision)
    service.precision_unchecked = unchecked
    if not ckpt.fine_tuned and service.fingerprint != ckpt.architecture.encoder.fingerprint:
        raise CheckpointError(
            f"The encoder at {service.folder} does not match the one {ckpt.path.name} was trained with; "
            "restore it or retrain."
        )
    return service


def score_texts(
    ckpt: Checkpoint, texts: list[str], service: EmbeddingService, output_root: Path, batch_size: int
) -> np.ndarray:
    """Class probabilities: through the embedding cache for a frozen model, the full model otherwise."""
    device = service.device
    if ckpt.fine_tuned:
        predictor = Predictor(ckpt, output_root, device, service.precision)
        probs = predictor.predict_proba(texts, batch_size)
        service.set_precision(predictor.encoder.precision)  # the guard's verdict holds for the folds too
        service.precision_unchecked = False
        return probs
    lexical = ckpt.lexical_features()
    model, _ = build_classifier(ckpt, output_root, need_encoder=False)
    model.to(device)
    if service.precision_unchecked:
        sample = [texts[i] for i in sample_indices(len(texts), seed=0)]
        service.check_precision(sample, labeller=model_labeller(model, lexical, sample, device))
        service.precision_unchecked = False
    vectors, _ = service.embed(texts)
    matrix = lexical.transform(texts) if lexical is not None else None
    return predict_embedded(model, vectors, matrix, device)


@dataclass
class EvaluationOutcome:
    folder: Path
    summary: dict[str, float]
    rows: int
    unseen_labels: dict[str, int]
    ece: float
    cv: pd.DataFrame | None = None
    files: list[str] = field(default_factory=list)
    trust: TrustOutcome | None = None
    multilabel: bool = False


class ResultWriter:
    """Writes into a staging folder that replaces ``evaluation_results/`` in one step at the end."""

    def __init__(self, output_root: Path):
        self.final = RunLayout(output_root).evaluation_dir
        self.staging = RunLayout.staging_for(self.final)
        self.staging.mkdir(parents=True)
        self.plots: list[Path] = []

    def csv(self, name: str, frame: pd.DataFrame, index: bool = False) -> None:
        write_csv_atomic(self.staging / name, frame.reset_index() if index else frame)

    def plot(self, name: str, draw: Callable[[Path], Path], register: bool = True) -> None:
        path = draw(self.staging / name)
        if register:
            self.plots.append(path)

    def commit(self) -> Path:
        return replace_dir(self.staging, self.final)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def write_analysis(
    writer: ResultWriter,
    prefix: str,
    texts: list[str],
    truth: list[str],
    probs: np.ndarray,
    labels: list[str],
    cfg: EvaluationSection,
    full: bool,
) -> tuple[pd.DataFrame, pd.DataFrame, float | None]:
    """predictions, error analysis and confusion matrix (and, when ``full``, every other table and plot, and the
    expected calibration error over ``evaluation.confidence_bins`` bins, the one ECE bertcls reports)."""
    predictions, all_predictions = prediction_frames(texts, truth, probs, labels)
    ece = None
    axis = report_labels(labels, truth)
    confusion = confusion_frame(truth, list(predictions.predicted_label), axis)
    writer.csv(f"{prefix}predictions.csv", predictions)
    writer.csv(f"{prefix}error_analysis.csv", error_frame(predictions, probs))
    writer.plot(f"{prefix}confusion_matrix.png", lambda p: plots.confusion_matrix_plot(confusion, p), register=full)
    if full:
        report = classification_report_frame(truth, list(predictions.predicted_label), axis)
        writer.csv("sklearn_classification_report.csv", report)
        writer.csv("confusion_matrix.csv", confusion, index=True)
        correct = (predictions.true_label == predictions.predicted_label).to_numpy()
        calibration, ece = confidence_frame(predictions.confidence.to_numpy(), correct, cfg.confidence_bins)
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
    return predictions, all_predictions, ece


def run_cv(
    writer: ResultWriter,
    settings: Settings,
    frame: pd.DataFrame,
    service: EmbeddingService,
    folds: int,
    cfg: EvaluationSection,
    on_stage: StageFn,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Cross-validate, write fold_K/ folders and cv_metrics.csv; returns the cv table, the out-of-fold predictions
    and the out-of-fold probabilities (rows of ``frame``, columns the sorted labels of ``frame``)."""
    text_col, label_col = settings.data.text_column, settings.data.label_column
    results: list[FoldResult] = cross_validate(
        settings, frame, service, folds, lambda f, k: on_stage(f"Cross-validation fold {f}/{k}")
    )
    fold_metrics, out_of_fold = [], []
    for result in results:
        texts = frame[text_col].iloc[result.test_index].tolist()
        truth = frame[label_col].iloc[result.test_index].tolist()
        predictions, all_predictions, _ = write_analysis(
            writer, f"fold_{result.fold}/", texts, truth, result.probs, result.labels, cfg, full=False
        )
        fold_metrics.append(summary_metrics(truth, list(predictions.predicted_label), result.labels))
        out_of_fold.append(all_predictions.assign(source="cross_validation", fold=result.fold))
    cv = cv_summary_frame(fold_metrics)
    writer.csv("cv_metrics.csv", cv)
    oof = np.zeros((len(frame), len(results[0].labels)))
    for result in results:
        oof[result.test_index] = result.probs
    return cv, pd.concat(out_of_fold, ignore_index=True), oof


def write_trust(writer: ResultWriter, probs: np.ndarray, truth: np.ndarray, temperature: float, cfg) -> dict:
    """calibration.csv, reliability_diagram.png, risk_coverage.csv and .png; returns the numbers for the summary."""
    calibration = calibration_summary(probs, truth, temperature, cfg.confidence_bins)
    writer.csv("calibration.csv", calibration)
    known = truth >= 0
    before = uncalibrate(probs, temperature)[known]
    frames = {
        stage: reliability_frame(p.max(axis=1), p.argmax(axis=1) == truth[known], cfg.confidence_bins)
        for stage, p in (("before calibration", before), ("after calibration", probs[known]))
    }
    writer.plot("reliability_diagram.png", lambda p: plots.reliability_plot(frames, temperature, p))
    curve = risk_coverage(probs, truth)
    writer.csv("risk_coverage.csv", curve)
    best = threshold_for(curve, cfg.target_accuracy)
    writer.plot("risk_coverage.png", lambda p: plots.risk_coverage_plot(curve, cfg.target_accuracy, best, p))
    return {
        "calibration": calibration,
        "reliability": frames,
        "risk_coverage": curve,
        "threshold": best,
        "target": cfg.target_accuracy,
    }


def write_label_issues(
    writer: ResultWriter, cv_data: pd.DataFrame, oof: np.ndarray, text_col: str, label_col: str
) -> pd.DataFrame:
    names = sorted(cv_data[label_col].unique().tolist())
    given = cv_data[label_col].map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
    issues = label_issues(cv_data, oof, given, names, text_col, label_col)
    writer.csv("label_issues.csv", issues)
    logger.info("Confident learning flags %d of %d rows as likely label issues", len(issues), len(cv_data))
    return issues


def write_near_duplicates(
    writer: ResultWriter, service: EmbeddingService, reference: pd.DataFrame, data: pd.DataFrame, cols, threshold
) -> pd.DataFrame:
    text_col, label_col = cols
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


@dataclass
class TrustOutcome:
    calibration: pd.DataFrame
    threshold: pd.Series | None
    label_issues: pd.DataFrame | None = None
    near_duplicates: pd.DataFrame | None = None


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
    """Score ``data``, cross-validate on ``cv_data`` (if folds > 0), and write ``<output_root>/evaluation_results/``.
    With ``reference`` (the training and validation rows), list near-duplicates between it and ``data``."""
    if ckpt.multilabel:
        from bertcls.evaluation.multilabel import evaluate_multilabel

        return evaluate_multilabel(ckpt, data, cv_data, settings_now, folds, device, on_stage, reference)
    root, cfg = settings_now.root, settings_now.evaluation
    trained = ckpt.trained_settings(root)
    text_col, label_col = trained.data.text_column, trained.data.label_column
    labels = ckpt.labels
    texts, truth = data[text_col].tolist(), data[label_col].tolist()
    check_request(texts, cfg, folds, cv_data)
    writer = ResultWriter(root)
    try:
        on_stage("Scoring")
        service = checkpoint_service(ckpt, trained, device, settings_now.model.precision)
        probs = score_texts(ckpt, texts, service, root, settings_now.encoder.encode_batch_size)
        on_stage("Writing tables and plots")
        predictions, all_predictions, ece = write_analysis(writer, "", texts, truth, probs, labels, cfg, full=True)
        trust = write_trust(writer, probs, truth_indices(truth, labels), ckpt.temperature, cfg)
        summary = summary_metrics(truth, list(predictions.predicted_label), report_labels(labels, truth))
        unseen = {k: int(v) for k, v in data[~data[label_col].isin(labels)][label_col].value_counts().items()}
        cv, everything = None, [all_predictions.assign(source="evaluation", fold="")]
        outcome = TrustOutcome(trust["calibration"], trust["threshold"])
        if folds > 0 and cv_data is not None:
            cv, out_of_fold, oof = run_cv(writer, trained, cv_data, service, folds, cfg, on_stage)
            everything.append(out_of_fold)
            if cfg.find_label_issues:
                on_stage("Finding label issues")
                outcome.label_issues = write_label_issues(writer, cv_data, oof, text_col, label_col)
        if reference is not None and len(reference):
            on_stage("Looking for near-duplicates")
            cols = (text_col, label_col)
            threshold = cfg.near_duplicate_threshold
            outcome.near_duplicates = write_near_duplicates(writer, service, reference, data, cols, threshold)
        writer.csv("all_predictions.csv", pd.concat(everything, ignore_index=True))
        page = report_page(ckpt, data, summary, unseen, cv, folds, trust, outcome, writer)
        write_text_atomic(writer.staging / "report.html", page)
        files = sorted(str(p.relative_to(writer.staging)) for p in writer.staging.rglob("*") if p.is_file())
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return EvaluationOutcome(folder, summary, len(data), unseen, ece, cv, files, outcome)
