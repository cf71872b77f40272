"""The train workflow: data -> features -> model -> trainer -> test metrics -> checkpoint.

The pieces are reused by evaluate (cross-validation) and optimize (trials and PBT members).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bertcls.batches import BatchSource, EmbeddingBatches, TextBatches, score_source
from bertcls.calibration import CalibrationRecord
from bertcls.callbacks import WorkflowHooks
from bertcls.checkpoint import (
    Architecture,
    CheckpointMeta,
    DataProvenance,
    EncoderRef,
    TuningProvenance,
    library_versions,
    now_iso,
    save_checkpoint,
)
from bertcls.config import ClassifierSection, Settings
from bertcls.convex import ConvexTrainer
from bertcls.data import DataReport, Splits, load_splits, write_splits
from bertcls.distributed import SINGLE, Parallel, world
from bertcls.encoder import pick_device
from bertcls.errors import ConfigError
from bertcls.features import EmbeddingService, truncation_summary
from bertcls.interrupts import Interrupted
from bertcls.layout import RunLayout
from bertcls.lexical import LexicalFeatures
from bertcls.memory import MemoryManager, default_probe
from bertcls.model import HeadSpec, LexicalLayer, MLPHead, TextClassifier, count_parameters, load_trainable_state
from bertcls.precision import describe as describe_precision
from bertcls.precision import resolve_precision, sample_indices
from bertcls.redaction import redact_data
from bertcls.resume import ResumeWriter, check_resume_data, data_fingerprint, read_resume, settings_fingerprint
from bertcls.task import DecisionRule, Task, task_for
from bertcls.training import Trainer, TrainingPlan, TrainResult

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FeatureSet:
    """Model inputs for each split, plus what was learned while making them."""

    sources: dict[str, BatchSource]
    truncation: dict[str, float]
    fine_tune: bool
    lexical: LexicalFeatures | None = None
    chunking: dict[str, int] | None = None


def fit_lexical(texts: list[str], settings: Settings) -> LexicalFeatures | None:
    """TF-IDF vectorizers fitted on the training texts, when ``classifier.lexical_features`` is on."""
    return LexicalFeatures.fit(texts, settings.lexical) if settings.classifier.lexical_features else None


def batch_source(
    service: EmbeddingService, texts: list[str], labels: np.ndarray, fine_tune: bool, matrix
) -> tuple[BatchSource, np.ndarray]:
    """The model inputs of some texts (embeddings or tokens, plus their TF-IDF rows, if any) and their untruncated
    lengths."""
    if fine_tune:
        lengths = service.encoder.token_lengths(texts)
        return TextBatches(service.encoder, texts, labels, lengths, matrix), lengths
    vectors, lengths = service.embed(texts)
    return EmbeddingBatches(vectors, labels, matrix), lengths


def build_features(
    service: EmbeddingService, splits: Splits, names: list[str], settings: Settings, fine_tune: bool
) -> FeatureSet:
    cfg, task = settings.data, task_for(settings.model.task)
    lexical, matrices = None, {}
    if settings.classifier.lexical_features:
        lexical, matrices["train"] = LexicalFeatures.fit_transform(
            splits.train[cfg.text_column].tolist(), settings.lexical
        )
    sources: dict[str, BatchSource] = {}
    all_lengths = []
    for split_name, frame in splits.items():
        texts = frame[cfg.text_column].tolist()
        labels = task.encode(frame, cfg, names, split_name)
        if lexical is not None and split_name not in matrices:
            matrices[split_name] = lexical.transform(texts)
        sources[split_name], lengths = batch_source(service, texts, labels, fine_tune, matrices.get(split_name))
        all_lengths.append(lengths)
    truncation = truncation_summary(np.concatenate(all_lengths), service.max_seq_len)
    chunks = not fine_tune and settings.encoder.long_texts == "chunks"
    if chunks:
        report = service.chunking.as_dict()
        logger.info(
            "%d of %d texts were longer than max_seq_len and embedded as %d windows in all (%d cut at max_chunks)",
            report["chunked"],
            report["texts"],
            report["windows"],
            report["cut"],
        )
        return FeatureSet(sources, truncation, fine_tune, lexical, report)
    if truncation["truncated"]:
        logger.warning(
            "%d of %d texts (%.1f%%) are longer than max_seq_len %d tokens and are truncated.",
            truncation["truncated"],
            truncation["total"],
            100 * truncation["fraction"],
            service.max_seq_len,
        )
    return FeatureSet(sources, truncation, fine_tune, lexical)


def head_spec(cfg: ClassifierSection, dim: int, num_classes: int, task: Task, frozen: bool = True) -> HeadSpec:
    if cfg.bert_hidden_size != dim:
        raise ConfigError(
            f"classifier.bert_hidden_size is {cfg.bert_hidden_size} but the encoder gives {dim}-dimensional "
            "embeddings; "
            f"set classifier.bert_hidden_size: {dim}."
        )
    return HeadSpec.from_config(cfg, dim, num_classes, task, frozen)


def make_trainer(
    settings: Settings, features: FeatureSet, service: EmbeddingService, num_classes: int, ranks: Parallel = SINGLE
) -> Trainer:
    """A fresh model and trainer for one run (a fold, a trial or a population member share this); ``ranks``: the
    torchrun processes that train it together (fine-tuning only)."""
    device = service.device
    seed_everything(settings.model.seed)  # here, so a cold run (which loads the encoder) equals a warm one
    encoder = None
    if features.fine_tune:
        encoder = service.encoder
        encoder.set_trainable(freeze=False, unfreeze_last_n_layers=settings.encoder.unfreeze_last_n_layers)
    lexical = None
    if features.lexical is not None:
        lexical = LexicalLayer(features.lexical.spec.num_features, num_classes)
    task = task_for(settings.model.task)
    spec = head_spec(settings.classifier, service.dim, num_classes, task, not features.fine_tune)
    rule = DecisionRule(min_labels=settings.classifier.min_labels)
    model = TextClassifier(MLPHead(spec), encoder, lexical, rule)
    memory = MemoryManager(settings.memory, settings.model.batch_size_for(features.fine_tune), default_probe(device))
    train = features.sources["train"]
    if model.head.scale is not None:
        model.head.scale.fit(train.embeddings)
    task.init_output(model.head.net[-1].bias, train.labels)
    weights = None
    if settings.classifier.resolved_class_weights(task) == "balanced":
        weights = task.balanced_weights(train.labels, num_classes)
    args = (model, train, features.sources["val"], TrainingPlan.of(settings), memory, device)
    kwargs = dict(class_weights=weights, precision=service.precision, ranks=ranks)
    if settings.classifier.resolved_head(task, not features.fine_tune) == "linear":
        cfg = settings.classifier
        logger.info(
            "Linear head fitted by L-BFGS (classifier.linear_l2 %g): hidden_dims, dropout, the optimizer settings "
            "and the batch size do not apply to it",
            cfg.linear_l2,
        )
        return ConvexTrainer(*args, l2=cfg.linear_l2, embedding_penalty=cfg.linear_embedding_penalty, **kwargs)
    return Trainer(*args, **kwargs)


def rebuild_model(
    settings: Settings, service: EmbeddingService, num_classes: int, state: dict[str, torch.Tensor]
) -> TextClassifier:
    """The model ``settings`` describe, holding ``state`` (a fine-tuned state brings the service's encoder along)."""
    encoder = service.encoder if any(k.startswith("encoder.") for k in state) else None
    lexical = None
    if any(k.startswith("lexical.") for k in state):
        lexical = LexicalLayer(state["lexical.weight"].shape[0], num_classes)
    task = task_for(settings.model.task)
    spec = head_spec(settings.classifier, service.dim, num_classes, task, encoder is None)
    rule = DecisionRule(min_labels=settings.classifier.min_labels)
    model = TextClassifier(MLPHead(spec), encoder, lexical, rule)
    load_trainable_state(model, state)
    return model.to(service.device).eval()


def split_metrics(model: TextClassifier, features: FeatureSet, device: torch.device) -> dict[str, dict[str, float]]:
    """The loss and metrics of a trained model on the val and test splits, as its task scores them."""
    return {split: score_source(model, features.sources[split], device) for split in ("val", "test")}


def checkpoint_meta(
    settings: Settings,
    service: EmbeddingService,
    names: list[str],
    result: TrainResult,
    metrics: dict[str, Any],
    model: TextClassifier,
    lexical: LexicalFeatures | None = None,
    tuning: TuningProvenance | None = None,
    data: DataProvenance | None = None,
    calibration: CalibrationRecord | None = None,
) -> CheckpointMeta:
    """The typed metadata of a model trained with ``settings``: its architecture comes from these settings, so a
    caller must pass the settings that built the saved weights (a PBT member's own, not the study's)."""
    fine_tuned = model.encoder is not None and any(p.requires_grad for p in model.encoder.parameters())
    described = service.describe()
    if fine_tuned:  # fine-tuning reads the first max_seq_len tokens of each text, and so must prediction
        described.update(long_texts="truncate", max_chunks=1)
    encoder = EncoderRef(**described, fine_tuned=fine_tuned)
    head = head_spec(settings.classifier, encoder.dim, len(names), task_for(settings.model.task), not fine_tuned)
    if head != model.head.spec:
        raise ValueError(f"the settings describe head {head}, but the model has {model.head.spec}")
    if (lexical is None) != (model.lexical is None):
        raise ValueError("the model's lexical layer and the lexical features disagree")
    return CheckpointMeta(
        architecture=Architecture(encoder=encoder, head=head, lexical=lexical.spec if lexical else None),
        settings=redact_data(settings.model_dump(mode="json")),
        labels=names,
        history=result.history_dicts(),
        best_epoch=result.best_epoch,
        stop_reason=result.stop_reason,
        metrics=metrics,
        parameters=count_parameters(model),
        versions=library_versions(),
        created_at=now_iso(),
        tuning=tuning,
        data=data or DataProvenance(),
        precision=service.precision_check,
        calibration=calibration,
    )


def score_and_save(
    path: Path,
    settings: Settings,
    service: EmbeddingService,
    names: list[str],
    features: FeatureSet,
    model: TextClassifier,
    result: TrainResult,
    calibration: CalibrationRecord,
    tuning: TuningProvenance | None = None,
    data: DataProvenance | None = None,
) -> tuple[Path, dict[str, dict[str, float]]]:
    """Score a trained model (holding ``result``'s best weights) on val and test and save it as a checkpoint at
    ``path``: the one way ``train``, TPE trials and PBT members finish a model. ``settings``: the ones that built
    it. Returns the path and the metrics."""
    metrics = split_metrics(model, features, service.device)
    lexical = features.lexical
    meta = checkpoint_meta(settings, service, names, result, metrics, model, lexical, tuning, data, calibration)
    return save_checkpoint(path, result.best_state, meta, lexical), metrics


@dataclass
class TrainOutcome:
    task: Task
    checkpoint: Path
    result: TrainResult
    metrics: dict[str, dict[str, float]]
    report: DataReport
    truncation: dict[str, float]
    cache_hits: int
    cache_misses: int
    encoder_loaded: bool
    chunking: dict[str, int] | None = None
    lexical_features: int = 0
    precision: str = "fp32"


@dataclass
class PreparedRun:
    """Everything before the training loop: checked splits, label names, the encoder service and the features."""

    splits: Splits
    report: DataReport
    names: list[str]
    service: EmbeddingService
    features: FeatureSet


def prepare(settings: Settings, hooks: WorkflowHooks) -> PreparedRun:
    """Data checks and split, encoder, cached features. Nothing is written to ``data/`` here: the splits are saved
    beside the model once it exists, so a failed run leaves an earlier model and its splits together."""
    seed_everything(settings.model.seed)
    hooks.on_stage("Checking and splitting data")
    task = task_for(settings.model.task)
    splits, report = load_splits(settings.data, settings.root, settings.model.seed, task)
    names = task.label_names(splits.train, settings.data)
    hooks.on_stage("Preparing encoder")
    device = pick_device(settings.model.device)
    precision = resolve_precision(settings.model.precision, device)
    service = EmbeddingService(settings.encoder, settings.model.max_seq_len, settings.root, device, precision)
    if precision != "fp32":
        hooks.on_stage(f"Checking {precision} against fp32")
        guard_precision(service, splits.train, names, settings)
    service.progress = hooks.on_encode_progress
    hooks.on_stage("Encoding texts")
    features = build_features(service, splits, names, settings, fine_tune=not settings.encoder.freeze)
    return PreparedRun(splits, report, names, service, features)


def guard_precision(service: EmbeddingService, train: pd.DataFrame, names: list[str], settings: Settings) -> None:
    """Check the service's reduced precision on a sample of the training texts (the verdict stays on the
    service, and goes into every checkpoint made with it)."""
    rows = train.iloc[sample_indices(len(train), settings.model.seed)]
    task = task_for(settings.model.task)
    labels = task.guard_classes(task.encode(rows, settings.data, names, "train"))
    check = world().broadcast(service.check_precision(rows[settings.data.text_column].tolist(), labels))
    service.set_precision(check.used)  # under torchrun every rank follows rank 0's verdict
    service.precision_check = check


def run_training(
    settings: Settings, hooks: WorkflowHooks | None = None, stop_request=None, resume: bool = False
) -> TrainOutcome | None:
    """Train one model as configured, save ``best_trials/best_model.pt`` and the splits it used under ``data/``
    (under torchrun: rank 0 does the writing and returns the outcome; the other ranks return None).
    After every epoch the run's state goes to ``checkpoints/last_state.pt`` (removed when the run finishes), so an
    interrupted run can go on with ``resume``. A ``stop_request`` that fires saves the best epoch so far, then
    raises :class:`Interrupted`."""
    hooks = hooks or WorkflowHooks()
    settings_fp, state_path = settings_fingerprint(settings), RunLayout(settings.root).resume_state
    payload = read_resume(state_path, settings_fp) if resume else None
    run = prepare(settings, hooks)
    here = world()
    if not run.features.fine_tune and not here.is_main:
        return None  # frozen mode: the embeddings were computed sharded; rank 0 trains the head
    ranks = here if run.features.fine_tune else SINGLE  # a frozen head trains on rank 0 alone
    trainer = make_trainer(settings, run.features, run.service, len(run.names), ranks)
    trainer.add_callback(hooks)
    data_fp = data_fingerprint(run.splits, settings.data, task_for(settings.model.task))
    if payload is not None:
        trainer.load_resume_state(check_resume_data(payload, data_fp))
        logger.info("Resuming after epoch %d from %s", trainer.state.epoch, state_path)
    if here.is_main:
        trainer.add_callback(ResumeWriter(state_path, settings_fp, data_fp))
    hooks.on_stage("Training")
    result = trainer.fit(stop_request)
    if not here.is_main:
        return None  # only rank 0 writes the checkpoint, the splits and files
    if trainer.state.interrupted and not result.best_state:
        raise Interrupted(stop_request.signum, "Interrupted before the first epoch finished; nothing was saved.")
    outcome = save_trained(settings, run, trainer)
    if trainer.state.interrupted:
        raise Interrupted(
            stop_request.signum,
            f"Interrupted after epoch {trainer.state.epoch}: saved the best epoch ({result.best_epoch}) to "
            f"{outcome.checkpoint}. Run the same command with --resume to go on.",
        )
    state_path.unlink(missing_ok=True)
    return outcome


def save_trained(settings: Settings, run: PreparedRun, trainer: Trainer) -> TrainOutcome:
    """Score the best weights on val and test, save the checkpoint, then the splits beside it."""
    result, features = trainer.result, run.features
    chunking, warnings = features.chunking or {}, run.report.warnings
    data = DataProvenance(truncation=features.truncation, chunking=chunking, warnings=warnings)
    path, metrics = score_and_save(
        RunLayout(settings.root).best_model,
        settings,
        run.service,
        run.names,
        features,
        trainer.model,
        result,
        trainer.calibration,
        data=data,
    )
    lexical = features.lexical
    write_splits(run.splits, settings.root)
    service = run.service
    lexical_count = lexical.spec.num_features if lexical is not None else 0
    return TrainOutcome(
        task_for(settings.model.task),
        path,
        result,
        metrics,
        run.report,
        run.features.truncation,
        service.stats.hits,
        service.stats.misses,
        service.encoder_loaded,
        run.features.chunking,
        lexical_count,
        describe_precision(service.precision_check),
    )
