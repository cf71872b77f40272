"""The train workflow: data -> features -> model -> trainer -> test metrics -> checkpoint.

The pieces are reused by evaluate (cross-validation) and optimize (trials and PBT members).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bertcls.callbacks import WorkflowHooks
from bertcls.checkpoint import library_versions, now_iso, save_checkpoint
from bertcls.config import ClassifierSection, DataSection, Settings
from bertcls.data import DataReport, Splits, load_splits
from bertcls.encoder import pick_device
from bertcls.errors import ConfigError, DataError
from bertcls.features import EmbeddingService, truncation_summary
from bertcls.memory import MemoryManager, default_probe
from bertcls.model import MLPHead, TextClassifier, count_parameters
from bertcls.training import (
    BatchSource,
    EmbeddingBatches,
    TextBatches,
    Trainer,
    TrainResult,
    predict_proba,
    score,
)

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def label_names(train: pd.DataFrame, cfg: DataSection) -> list[str]:
    return sorted(train[cfg.label_column].unique().tolist())


def encode_labels(frame: pd.DataFrame, cfg: DataSection, names: list[str], source: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    unseen = sorted(set(frame[cfg.label_column]) - set(index))
    if unseen:
        raise DataError(f"The {source} split has label(s) {', '.join(map(repr, unseen))} that the training split lacks.")
    return frame[cfg.label_column].map(index).to_numpy(dtype=np.int64)


@dataclass
class FeatureSet:
    """Model inputs for each split, plus what was learned while making them."""

    sources: dict[str, BatchSource]
    truncation: dict[str, float]
    fine_tune: bool


def build_features(service: EmbeddingService, splits: Splits, names: list[str], cfg: DataSection, fine_tune: bool) -> FeatureSet:
    sources: dict[str, BatchSource] = {}
    all_lengths = []
    for split_name, frame in splits.items():
        texts = frame[cfg.text_column].tolist()
        labels = encode_labels(frame, cfg, names, split_name)
        if fine_tune:
            lengths = service.encoder.token_lengths(texts)
            sources[split_name] = TextBatches(service.encoder, texts, labels, lengths)
        else:
            vectors, lengths = service.embed(texts)
            sources[split_name] = EmbeddingBatches(vectors, labels)
        all_lengths.append(lengths)
    truncation = truncation_summary(np.concatenate(all_lengths), service.max_seq_len)
    if truncation["truncated"]:
        logger.warning(
            "%d of %d texts (%.1f%%) are longer than max_seq_len %d tokens and are truncated.",
            truncation["truncated"], truncation["total"], 100 * truncation["fraction"], service.max_seq_len,
        )
    return FeatureSet(sources, truncation, fine_tune)


def build_model(cfg: ClassifierSection, dim: int, num_classes: int, encoder=None) -> TextClassifier:
    if cfg.bert_hidden_size != dim:
        raise ConfigError(
            f"classifier.bert_hidden_size is {cfg.bert_hidden_size} but the encoder gives {dim}-dimensional embeddings; "
            f"set classifier.bert_hidden_size: {dim}."
        )
    return TextClassifier(MLPHead(dim, cfg, num_classes), encoder)


def make_trainer(settings: Settings, features: FeatureSet, service: EmbeddingService, num_classes: int) -> Trainer:
    """A fresh model and trainer for one run (a fold, a trial or a population member share this)."""
    device = service.device
    seed_everything(settings.model.seed)  # here, so a cold run (which loads the encoder) equals a warm one
    encoder = None
    if features.fine_tune:
        encoder = service.encoder
        encoder.set_trainable(freeze=False, unfreeze_last_n_layers=settings.encoder.unfreeze_last_n_layers)
    model = build_model(settings.classifier, service.describe()["dim"], num_classes, encoder)
    memory = MemoryManager(settings.memory, settings.model.batch_size, default_probe(device))
    return Trainer(model, features.sources["train"], features.sources["val"], num_classes, settings.model,
                   settings.optimizer, settings.early_stopping, memory, device, settings.encoder.encoder_lr)


def split_metrics(model: TextClassifier, features: FeatureSet, device: torch.device, num_classes: int) -> dict[str, dict[str, float]]:
    """Loss, accuracy and macro F1 of a trained model on the val and test splits."""
    return {split: score(predict_proba(model, features.sources[split], device), features.sources[split].labels, num_classes)
            for split in ("val", "test")}


def checkpoint_meta(settings: Settings, service: EmbeddingService, names: list[str], result: TrainResult,
                    metrics: dict[str, Any], model: TextClassifier, fine_tune: bool, extra: dict | None = None) -> dict:
    return {
        "config": settings.model_dump(mode="json"),
        "labels": names,
        "history": result.history_dicts(),
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "metrics": metrics,
        "encoder": {**service.describe(), "fine_tuned": fine_tune},
        "parameters": count_parameters(model),
        "versions": library_versions(),
        "created_at": now_iso(),
        "extra": extra or {},
    }


@dataclass
class TrainOutcome:
    checkpoint: Path
    result: TrainResult
    metrics: dict[str, dict[str, float]]
    report: DataReport
    truncation: dict[str, float]
    cache_hits: int
    cache_misses: int
    encoder_loaded: bool
    split_sizes: dict[str, int] = field(default_factory=dict)


def prepare(settings: Settings, hooks: WorkflowHooks) -> tuple[Splits, DataReport, list[str], EmbeddingService, FeatureSet]:
    """Everything before the training loop: data checks and split, encoder, cached features."""
    seed_everything(settings.model.seed)
    hooks.on_stage("Checking and splitting data")
    splits, report = load_splits(settings.data, settings.root, settings.model.seed)
    names = label_names(splits.train, settings.data)
    hooks.on_stage("Preparing encoder")
    service = EmbeddingService(settings.encoder, settings.model.max_seq_len, settings.root, pick_device(settings.model.device))
    service.progress = hooks.on_encode_progress
    hooks.on_stage("Encoding texts")
    features = build_features(service, splits, names, settings.data, fine_tune=not settings.encoder.freeze)
    return splits, report, names, service, features


def run_training(settings: Settings, hooks: WorkflowHooks | None = None) -> TrainOutcome:
    """Train one model as configured and save ``best_trials/best_model.pt``."""
    hooks = hooks or WorkflowHooks()
    splits, report, names, service, features = prepare(settings, hooks)
    trainer = make_trainer(settings, features, service, len(names))
    trainer.add_callback(hooks)
    hooks.on_stage("Training")
    result = trainer.fit()
    metrics = split_metrics(trainer.model, features, service.device, len(names))
    meta = checkpoint_meta(settings, service, names, result, metrics, trainer.model, features.fine_tune,
                           {"truncation": features.truncation, "data_warnings": report.warnings})
    path = save_checkpoint(settings.root / "best_trials" / "best_model.pt", result.best_state, meta)
    return TrainOutcome(path, result, metrics, report, features.truncation, service.stats.hits,
                        service.stats.misses, service.encoder_loaded, {k: len(v) for k, v in splits.items()})
