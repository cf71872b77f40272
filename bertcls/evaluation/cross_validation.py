"""Stratified k-fold cross-validation that retrains with a checkpoint's config; identical texts share a fold."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from bertcls.batches import BatchSource, EmbeddingBatches, TextBatches, predict_proba
from bertcls.config import Settings
from bertcls.errors import DataError
from bertcls.features import EmbeddingService
from bertcls.labelsets import fold_parts, grouped_parts, label_matrix, names_of
from bertcls.workflow import FeatureSet, fit_lexical, make_trainer

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
    thresholds: list[float] | None = None  # multi-label: the fold model's decision thresholds
    min_labels: int = 0


def check_folds(frame: pd.DataFrame, text_column: str, label_column: str, folds: int) -> None:
    distinct = frame.drop_duplicates(subset=[text_column])[label_column].value_counts()
    small = distinct[distinct < folds]
    if len(small):
        listed = ", ".join(f"{k!r} ({v})" for k, v in small.items())
        raise DataError(
            f"Cross-validation with {folds} folds needs at least {folds} distinct texts per class, but {listed} "
            f"have fewer; use a smaller --cv-folds (at most {int(distinct.min())}) or --cv-folds 0 to skip it."
        )


def fold_indices(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def warn_rare_labels(matrix: np.ndarray, groups: np.ndarray, names: list[str], folds: int) -> None:
    """Multi-label: a label with fewer distinct texts than folds is missing from some folds (not an error: rare
    labels are common in multi-label data)."""
    counts = matrix[np.unique(groups, return_index=True)[1]].sum(axis=0)
    rare = [f"{names[k]!r} ({int(counts[k])})" for k in np.flatnonzero(counts < folds)]
    if rare:
        logger.warning(
            "Label(s) %s have fewer texts than the %d folds; some folds test without them.", ", ".join(rare), folds
        )


def _inner_validation(
    train_idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about 10% of a fold's training rows (grouped by text) for early stopping (multi-label rows by
    iterative stratification)."""
    if labels.ndim == 2:
        inner = grouped_parts(labels[train_idx], groups[train_idx], [0.9, 0.1], seed)
        return train_idx[inner == 0], train_idx[inner == 1]
    n_inner = max(2, min(10, int(np.bincount(labels[train_idx]).min())))
    inner_train, inner_val = fold_indices(labels[train_idx], groups[train_idx], n_inner, seed)[0]
    return train_idx[inner_train], train_idx[inner_val]


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
    text_col, label_col = settings.data.text_column, settings.data.label_column
    texts = frame[text_col].tolist()
    groups = pd.factorize(frame[text_col])[0]
    if settings.multilabel:
        distinct = len(set(texts))
        if distinct < folds:
            raise DataError(
                f"Cross-validation with {folds} folds needs at least {folds} distinct texts; there are "
                f"{distinct}. Use a smaller --cv-folds or --cv-folds 0 to skip it."
            )
        names = names_of(frame, settings.data)
        labels = label_matrix(frame, settings.data, names)
        warn_rare_labels(labels, groups, names, folds)
        splits = fold_parts(labels, groups, folds, settings.model.seed)
    else:
        check_folds(frame, text_col, label_col, folds)
        names = sorted(frame[label_col].unique().tolist())
        labels = frame[label_col].map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
        splits = fold_indices(labels, groups, folds, settings.model.seed)
    fine_tune = not settings.encoder.freeze
    vectors = None if fine_tune else service.embed(texts)[0]
    results = []
    for fold, (train_idx, test_idx) in enumerate(splits, start=1):
        if on_fold:
            on_fold(fold, folds)
        inner_train, inner_val = _inner_validation(train_idx, labels, groups, settings.model.seed)
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
        model = trainer.model
        results.append(
            FoldResult(
                fold,
                test_idx,
                probs,
                names,
                result.stop_reason,
                len(result.history),
                model.thresholds,
                model.min_labels,
            )
        )
    if fine_tune:
        service.reload_encoder()  # the service embeds (and caches) with the pretrained encoder again
    return results
