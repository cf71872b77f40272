"""Everything before the training loop: data checks and split, label names, the encoder service (with the
precision guard) and the features."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from bertcls.config.settings import Settings
from bertcls.data.labelled import DataReport, Splits, load_splits
from bertcls.data.languages import languages_seen
from bertcls.features.cache import EncodingStopped
from bertcls.features.service import EmbeddingService
from bertcls.features.sets import FeatureSet, build_features
from bertcls.model.checkpoint import DataProvenance
from bertcls.model.encoder import pick_device
from bertcls.runtime.distributed import world
from bertcls.runtime.interrupts import Interrupted, StopRequest
from bertcls.runtime.precision import sample_indices
from bertcls.task import task_for
from bertcls.training.callbacks import StageClock, WorkflowHooks
from bertcls.training.setup import seed_everything

logger = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """Everything before the training loop: checked splits, label names, the encoder service and the features."""

    splits: Splits
    report: DataReport
    names: list[str]
    service: EmbeddingService
    features: FeatureSet
    stage: StageClock  # announces and times the stages that follow

    def provenance(self, data_fp: dict[str, str], settings: Settings) -> DataProvenance:
        """What the model is trained on: reading of long texts, data warnings, rows, labels, languages."""
        features, report = self.features, self.report
        train_labels = features.sources["train"].labels
        return DataProvenance(
            truncation=features.truncation,
            chunking=features.chunking or {},
            warnings=report.warnings,
            rows={name: len(frame) for name, frame in self.splits.items()},
            label_counts=task_for(settings.model.task).texts_per_label(train_labels, self.names),
            fingerprint=data_fp,
            excluded_rows=report.excluded_rows,
            dropped_rows=len(report.dropped_rows),
            languages=languages_seen(self.splits.train[settings.data.text_column].tolist()),
        )


def prepare(settings: Settings, hooks: WorkflowHooks, stop_request: StopRequest | None = None) -> PreparedRun:
    """Data checks and split, encoder, cached features. Nothing is written to ``data/`` here: the splits are saved
    beside the model once it exists, so a failed run leaves an earlier model and its splits together. A
    ``stop_request`` that fires while texts are encoded stops after the current block, keeping what was encoded
    in the cache, and raises :class:`Interrupted`."""
    seed_everything(settings.model.seed)
    stage = StageClock(hooks)
    stage("Checking and splitting data")
    task = task_for(settings.model.task)
    splits, report = load_splits(settings.data, settings.root, settings.model.seed, task)
    names = task.label_names(splits.train, settings.data)
    stage("Preparing encoder")
    device = pick_device(settings.model.device)
    service = EmbeddingService(
        settings.encoder, settings.model.max_seq_len, settings.root, device, settings.model.precision
    )
    if service.guard.pending and settings.encoder.freeze:  # a fine-tuned model is checked after training
        stage(f"Checking {service.precision} against fp32")
        guard_precision(service, splits.train, names, settings)
    service.progress = hooks.on_encode_progress
    if stop_request is not None:
        service.stop_check = lambda: stop_request.requested
    stage("Encoding texts")
    try:
        features = build_features(service, splits, names, settings, fine_tune=not settings.encoder.freeze)
    except EncodingStopped as stopped:
        assert stop_request is not None and stop_request.signum is not None  # only a stop request stops encoding
        raise Interrupted(
            stop_request.signum,
            f"Interrupted while encoding texts: the {len(stopped.vectors):,} encoded in this pass are kept in the "
            "cache for the next run; nothing else was saved.",
        ) from None
    return PreparedRun(splits, report, names, service, features, stage)


def guard_precision(service: EmbeddingService, train: pd.DataFrame, names: list[str], settings: Settings) -> None:
    """Check the service's reduced precision on a sample of the training texts (the verdict stays on the
    service, and goes into every checkpoint made with it)."""
    rows = train.iloc[sample_indices(len(train), settings.model.seed)]
    task = task_for(settings.model.task)
    labels = task.guard_classes(task.encode(rows, settings.data, names, "train"))
    check = world().broadcast(service.check_precision(rows[settings.data.text_column].tolist(), labels))
    service.adopt(check)  # under torchrun every rank follows rank 0's verdict
