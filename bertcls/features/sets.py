"""Model inputs for the train/val/test splits: embeddings or tokens, plus TF-IDF rows, and what making them
learned (truncation, chunking)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bertcls.config.settings import Settings
from bertcls.data.labelled import Splits
from bertcls.features.lexical import LexicalFeatures
from bertcls.features.service import EmbeddingService, truncation_summary
from bertcls.inference.batches import BatchSource, EmbeddingBatches, TextBatches
from bertcls.task import task_for

logger = logging.getLogger(__name__)


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
    service: EmbeddingService, texts: list[str], labels: np.ndarray, *, fine_tune: bool, matrix
) -> tuple[BatchSource, np.ndarray]:
    """The model inputs of some texts (embeddings or tokens, plus their TF-IDF rows, if any) and their untruncated
    lengths."""
    if fine_tune:
        lengths = service.encoder.token_lengths(texts)
        return TextBatches(service.encoder, texts, labels, lengths, matrix), lengths
    vectors, lengths = service.embed(texts)
    return EmbeddingBatches(vectors, labels, matrix), lengths


def build_features(
    service: EmbeddingService, splits: Splits, names: list[str], settings: Settings, *, fine_tune: bool
) -> FeatureSet:
    cfg, task = settings.data, task_for(settings.model.task)
    every_text = [] if fine_tune else [t for _, frame in splits.items() for t in frame[cfg.text_column].tolist()]
    with service.tokens_ahead(every_text):  # the tokenizer runs beside TF-IDF fitting and the encoder's loading
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
            sources[split_name], lengths = batch_source(
                service, texts, labels, fine_tune=fine_tune, matrix=matrices.get(split_name)
            )
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
