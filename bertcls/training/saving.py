"""Finishing a trained model: its metrics on val and test, its typed checkpoint metadata, the checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bertcls.config.settings import Settings
from bertcls.features.service import EmbeddingService
from bertcls.features.sets import FeatureSet
from bertcls.inference.batches import score_source
from bertcls.model.card import write_model_card
from bertcls.model.checkpoint import (
    Architecture,
    CheckpointMeta,
    DataProvenance,
    EncoderRef,
    TuningProvenance,
    library_versions,
    now_iso,
    save_checkpoint,
)
from bertcls.model.network import TextClassifier, count_parameters
from bertcls.runtime.layout import MODEL_CARD
from bertcls.runtime.redaction import redact_data
from bertcls.task import task_for
from bertcls.task.calibration import CalibrationRecord
from bertcls.tracking.records import TrackingRecord
from bertcls.training.setup import head_spec
from bertcls.training.trainer import TrainResult

logger = logging.getLogger(__name__)


def split_metrics(model: TextClassifier, features: FeatureSet, device: torch.device) -> dict[str, dict[str, float]]:
    """The loss and metrics of a trained model on the val and test splits, as its task scores them."""
    return {split: score_source(model, features.sources[split], device) for split in ("val", "test")}


@dataclass(frozen=True)
class TrainedModel:
    """A model at the end of a run and what describes it: the settings that built its weights (a PBT member's own,
    not the study's), the encoder service, the label names, the features it was trained on, the training result
    (its best weights), the calibration and where its run is tracked."""

    settings: Settings
    service: EmbeddingService
    names: list[str]
    features: FeatureSet
    model: TextClassifier
    result: TrainResult
    calibration: CalibrationRecord = field(default_factory=CalibrationRecord)
    tracking: TrackingRecord | None = None  # where the run that made it is tracked


def checkpoint_meta(
    trained: TrainedModel,
    metrics: dict[str, Any],
    tuning: TuningProvenance | None = None,
    data: DataProvenance | None = None,
) -> CheckpointMeta:
    """The typed metadata of a trained model: its architecture comes from the settings that built it."""
    settings, service, names, model = trained.settings, trained.service, trained.names, trained.model
    result, lexical = trained.result, trained.features.lexical
    fine_tuned = model.encoder is not None and any(p.requires_grad for p in model.encoder.parameters())
    described = service.describe()
    if fine_tuned:  # fine-tuning reads the first max_seq_len tokens of each text, and so must prediction
        described.update(long_texts="truncate", max_chunks=1)
    encoder = EncoderRef(**described, fine_tuned=fine_tuned)
    head = head_spec(settings.classifier, encoder.dim, len(names), task_for(settings.model.task), frozen=not fine_tuned)
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
        precision=service.guard.record(),
        calibration=trained.calibration,
        tracking=trained.tracking,
    )


def score_and_save(
    path: Path,
    trained: TrainedModel,
    tuning: TuningProvenance | None = None,
    data: DataProvenance | None = None,
    *,
    card: bool = False,
) -> tuple[Path, dict[str, dict[str, float]]]:
    """Score a trained model (holding its result's best weights) on val and test and save it as a checkpoint at
    ``path``: the one way ``train``, TPE trials and PBT members finish a model; with ``card``, its MODEL_CARD.md
    beside it. Returns the path and the metrics."""
    metrics = split_metrics(trained.model, trained.features, trained.service.device)
    meta = checkpoint_meta(trained, metrics, tuning, data)
    saved = save_checkpoint(path, trained.result.best_state, meta, trained.features.lexical)
    if card:
        write_model_card(path.with_name(MODEL_CARD), meta, trained.settings.root.absolute().name)
    return saved, metrics
