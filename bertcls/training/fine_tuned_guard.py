"""The precision guard of a fine-tuned model: fine-tuning changes the encoder, so a reduced precision is checked on
the trained model's own predictions after training (validation texts, topped up with training texts) instead of on
the pretrained encoder before it. The verdict is the model's own: it is not remembered per machine."""

from __future__ import annotations

import logging

import pandas as pd

from bertcls.features.service import EmbeddingService
from bertcls.features.sets import FeatureSet
from bertcls.model.classifier import Classifier
from bertcls.model.network import TextClassifier
from bertcls.runtime.precision import GUARD_SAMPLE, PrecisionCheck, log_check, measure, sample_indices

logger = logging.getLogger(__name__)


def guard_texts(val: pd.DataFrame, train: pd.DataFrame, text_column: str, seed: int) -> list[str]:
    """The guard's sample: validation texts first, topped up with training texts when the validation split is
    smaller than the sample (a handful of texts would say little)."""
    texts = val[text_column].iloc[sample_indices(len(val), seed)].tolist()
    missing = GUARD_SAMPLE - len(texts)
    if missing > 0:
        texts += train[text_column].iloc[sample_indices(len(train), seed, missing)].tolist()
    return texts


def guard_fine_tuned(
    service: EmbeddingService, model: TextClassifier, labels: list[str], features: FeatureSet, texts: list[str]
) -> PrecisionCheck | None:
    """Check the fine-tuned ``model`` at the service's reduced precision against fp32 on ``texts`` (embeddings and
    the model's labels) and settle the service's guard; None when nothing was pending (fp32, or a verdict given)."""
    if not service.guard.pending:
        return None
    label = Classifier(model, labels, features.lexical, None).labeller(texts, service.device)  # as predict's guard
    model.eval()
    batch = service.cfg.encode_batch_size
    check, _ = measure(service.encoder, texts, service.precision, service.device, batch, label)
    log_check(check)
    service.adopt(check)  # the verdict of these weights: never the machine's cache of the pretrained encoder's
    return check
