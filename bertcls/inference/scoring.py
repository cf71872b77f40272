"""Scoring a saved model's texts through the embedding cache (a frozen encoder) or the full model (a fine-tuned
one): ``evaluate`` scores its rows this way, ``suggest`` its pool (with the document vectors as well)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bertcls.config.settings import Settings
from bertcls.features.service import EmbeddingService
from bertcls.inference.prediction import Predictor
from bertcls.model.checkpoint import Checkpoint
from bertcls.model.classifier import Classifier
from bertcls.runtime.errors import CheckpointError
from bertcls.runtime.precision import sample_indices


def checkpoint_service(
    ckpt: Checkpoint, trained: Settings, device: torch.device, precision: str = "fp32"
) -> EmbeddingService:
    """The encoder service of the checkpoint's config, at the precision to run it at (see
    :class:`~bertcls.runtime.precision.PrecisionGuard`: the model's own check is trusted where it applies); a
    frozen checkpoint refuses an encoder whose fingerprint changed."""
    args = (trained.encoder, trained.model.max_seq_len, trained.root, device, precision)
    service = EmbeddingService(*args, trusted=ckpt.meta.precision)
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
    return score_and_embed(ckpt, texts, service, output_root, batch_size)[0]


def score_and_embed(
    ckpt: Checkpoint, texts: list[str], service: EmbeddingService, output_root: Path, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and the document vectors they came from (the fine-tuned encoder's, for such a model)."""
    device = service.device
    if ckpt.fine_tuned:
        predictor = Predictor(ckpt, output_root, device, service.precision)
        if predictor.guard.pending:
            predictor.check_precision(texts, batch_size)
        service.adopt(predictor.guard.record())  # the guard's verdict holds for the folds too
        vectors = predictor.embed(texts, batch_size)
        return predictor.classifier.predict_embedded(vectors, texts, device, batch_size), vectors
    classifier = Classifier.load(ckpt, output_root, with_encoder=False).to(device)
    if service.guard.pending:
        sample = [texts[i] for i in sample_indices(len(texts), seed=0)]
        service.check_precision(sample, labeller=classifier.labeller(sample, device))
    vectors, _ = service.embed(texts)
    return classifier.predict_embedded(vectors, texts, device), vectors
