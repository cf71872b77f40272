"""Stratified k-fold cross-validation that retrains with a checkpoint's config; identical texts share a fold."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bertcls.config.settings import Settings
from bertcls.features.service import EmbeddingService
from bertcls.features.sets import FeatureSet, fit_lexical
from bertcls.inference.batches import BatchSource, EmbeddingBatches, TextBatches, predict_proba
from bertcls.task import DecisionRule, task_for
from bertcls.training.setup import make_trainer

logger = logging.getLogger(__name__)
FoldCallback = Callable[[int, int], None]


@dataclass
class FoldResult:
    fold: int
    test_index: np.ndarray
    probs: np.ndarray
    labels: list[str]
    stop_reason: str
    epochs: int
    rule: DecisionRule  # how the fold's model decides (a multi-label model's thresholds)


def _source(
    service: EmbeddingService, texts: list[str], labels: np.ndarray, vectors: np.ndarray | None, lexical
) -> BatchSource:
    if vectors is not None:
        return EmbeddingBatches(vectors, labels, lexical)
    return TextBatches(service.encoder, texts, labels, service.encoder.token_lengths(texts), lexical)


def cross_validate(
    settings: Settings, frame: pd.DataFrame, service: EmbeddingService, folds: int, on_fold: FoldCallback | None = None
) -> list[FoldResult]:
    """Retrain on K-1 folds and predict the held-out fold, K times."""
    task = task_for(settings.model.task)
    texts = frame[settings.data.text_column].tolist()
    groups = pd.factorize(frame[settings.data.text_column])[0]
    names, splits = task.folds(frame, settings.data, folds, settings.model.seed)
    labels = task.encode(frame, settings.data, names, "cross-validation")
    fine_tune = not settings.encoder.freeze
    vectors = None if fine_tune else service.embed(texts)[0]
    results = []
    for fold, (train_idx, test_idx) in enumerate(splits, start=1):
        if on_fold:
            on_fold(fold, folds)
        inner_train, inner_val = task.inner_validation(train_idx, labels, groups, settings.model.seed)
        if fine_tune:
            service.reload_encoder()  # each fold starts from the pretrained weights
        lexical = fit_lexical([texts[i] for i in inner_train], settings)  # fitted on the fold's training rows only
        matrix = None if lexical is None else lexical.transform(texts)

        def pick(idx: np.ndarray, matrix=matrix) -> BatchSource:
            rows = None if matrix is None else matrix[idx]
            return _source(
                service, [texts[i] for i in idx], labels[idx], None if vectors is None else vectors[idx], rows
            )

        features = FeatureSet({"train": pick(inner_train), "val": pick(inner_val)}, {}, fine_tune, lexical)
        trainer = make_trainer(settings, features, service, len(names))
        result = trainer.fit()
        probs = predict_proba(trainer.model, pick(test_idx), service.device)
        logger.info(
            "Fold %d/%d: %d train, %d val, %d test rows; %s",
            fold,
            folds,
            len(inner_train),
            len(inner_val),
            len(test_idx),
            result.stop_reason,
        )
        results.append(
            FoldResult(fold, test_idx, probs, names, result.stop_reason, len(result.history), trainer.model.rule)
        )
    if fine_tune:
        service.reload_encoder()  # the service embeds (and caches) with the pretrained encoder again
    return results
