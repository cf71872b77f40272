"""Model inputs and inference: turning row indices into batches (precomputed embeddings or tokens, plus TF-IDF
rows); the logits, probabilities and scores of a model over a source; and fitting its calibration on one.

Prediction, evaluation and the training loop share these; no weight is trained here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from bertcls.features.lexical import sparse_batch
from bertcls.model.network import TextClassifier
from bertcls.task import DecisionRule
from bertcls.task.calibration import CalibrationRecord

if TYPE_CHECKING:
    from bertcls.config.settings import CalibrationSection


class BatchSource(Protocol):
    """Turns row indices into model inputs; knows how to order rows for an epoch. ``labels``: as the task's
    ``encode`` gives them (int64 class indices, or a float32 0/1 matrix with one column per label), the dtypes
    the losses take."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]: ...

    def epoch_order(self, rng: np.random.Generator, batch_size: int) -> np.ndarray: ...


def with_lexical(batch: dict[str, torch.Tensor], lexical, indices: np.ndarray, device: torch.device) -> dict:
    """Add the rows' TF-IDF features (a sparse tensor) when the source has them."""
    if lexical is not None:
        batch["lexical"] = sparse_batch(lexical, indices, device)
    return batch


class EmbeddingBatches:
    """Precomputed embeddings (frozen encoder), and the texts' TF-IDF features when the model uses them."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, lexical=None):
        self.embeddings = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.labels = np.asarray(labels)
        self.lexical = lexical

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        batch = {"embeddings": self.embeddings[torch.from_numpy(np.asarray(indices))].to(device)}
        return with_lexical(batch, self.lexical, indices, device)

    def epoch_order(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        return rng.permutation(len(self))


class TextBatches:
    """Raw texts tokenised per batch (fine-tuning): dynamic padding, batches grouped by length."""

    def __init__(self, encoder, texts: list[str], labels: np.ndarray, lengths: np.ndarray, lexical=None):
        self.encoder = encoder
        self.texts = texts
        self.labels = np.asarray(labels)
        self.lengths = np.asarray(lengths)
        self.lexical = lexical

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        features = self.encoder.tokenize([self.texts[i] for i in indices])
        return with_lexical({k: v.to(device) for k, v in features.items()}, self.lexical, indices, device)

    def epoch_order(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Shuffle, then sort within pools of 50 batches so each batch holds texts of similar length."""
        order = rng.permutation(len(self))
        pool = batch_size * 50
        chunks = [order[i : i + pool] for i in range(0, len(order), pool)]
        return np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])


class RowSubset:
    """Some rows of a source (a rank's share under torchrun)."""

    def __init__(self, source: BatchSource, rows: np.ndarray):
        self.source, self.rows = source, np.asarray(rows)
        self.labels = source.labels[self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        return self.source.batch(self.rows[indices], device)

    def epoch_order(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        return rng.permutation(len(self))


@torch.inference_mode()
def predict_logits(
    model: TextClassifier, source: BatchSource, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """The model's raw logits (before temperature scaling), in source order."""
    model.eval()
    chunks = []
    for start in range(0, len(source), batch_size):
        indices = np.arange(start, min(start + batch_size, len(source)))
        chunks.append(model(source.batch(indices, device)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.head.spec.num_classes), dtype=np.float32)


def predict_proba(
    model: TextClassifier, source: BatchSource, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Probabilities of the logits under the model's calibrated temperature, as its task makes them (a softmax, or
    a sigmoid per label)."""
    logits = torch.from_numpy(predict_logits(model, source, device, batch_size))
    if logits.numel() == 0:
        return logits.numpy()
    return model.probabilities(logits).numpy()


def predict_embedded(
    model: TextClassifier, vectors: np.ndarray, lexical, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Probabilities of texts given as their embeddings (and TF-IDF rows, for a model with a lexical layer)."""
    source = EmbeddingBatches(vectors, np.zeros(len(vectors), dtype=np.int64), lexical)  # labels unused
    return predict_proba(model, source, device, batch_size)


def score_source(model: TextClassifier, source: BatchSource, device: torch.device) -> dict[str, float]:
    """The loss and metrics of a model's decisions on a labelled source, as its task scores them."""
    probs = predict_proba(model, source, device)
    return model.task.score(probs, source.labels, model.head.spec.num_classes, model.rule)


def calibrate(
    model: TextClassifier, val: BatchSource, device: torch.device, cfg: CalibrationSection, bins: int = 10
) -> CalibrationRecord:
    """Fit the model's calibration on ``val`` as its task does (a temperature; per-label temperatures and
    thresholds) and give the model the rule it describes."""
    min_labels = model.rule.min_labels
    model.rule = DecisionRule(min_labels=min_labels)
    if model.task.calibrates(cfg):
        logits = predict_logits(model, val, device)
    else:
        logits = np.zeros((0, model.head.spec.num_classes), dtype=np.float32)
    record = model.task.calibrate(logits, val.labels, cfg, bins)
    model.rule = DecisionRule.calibrated(record, min_labels)
    return record
