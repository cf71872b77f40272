"""Model inputs and inference: turning row indices into batches (precomputed embeddings or tokens, plus TF-IDF
rows), class probabilities over a source, and the loss/accuracy/macro F1 of those probabilities.

Prediction, evaluation and the training loop share these; nothing here trains.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from bertcls.lexical import sparse_batch
from bertcls.metrics import accuracy, binary_log_loss, decide, macro_f1, multilabel_scores
from bertcls.model import TextClassifier


class BatchSource(Protocol):
    """Turns row indices into model inputs; knows how to order rows for an epoch. ``labels``: class indices
    (multiclass) or a 0/1 float matrix with one column per label (multilabel)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]: ...

    def epoch_order(self, rng: np.random.Generator, batch_size: int) -> np.ndarray: ...


def as_labels(labels: np.ndarray) -> np.ndarray:
    """Class indices as int64, a multi-label 0/1 matrix as float32 (what the two losses take)."""
    labels = np.asarray(labels)
    return labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int64)


def with_lexical(batch: dict[str, torch.Tensor], lexical, indices: np.ndarray, device: torch.device) -> dict:
    """Add the rows' TF-IDF features (a sparse tensor) when the source has them."""
    if lexical is not None:
        batch["lexical"] = sparse_batch(lexical, indices, device)
    return batch


class EmbeddingBatches:
    """Precomputed embeddings (frozen encoder), and the texts' TF-IDF features when the model uses them."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, lexical=None):
        self.embeddings = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.labels = as_labels(labels)
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
        self.labels = as_labels(labels)
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
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def predict_proba(
    model: TextClassifier, source: BatchSource, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Class probabilities: softmax of the logits divided by the model's calibrated temperature (a sigmoid per label
    for a multi-label model)."""
    logits = torch.from_numpy(predict_logits(model, source, device, batch_size))
    if logits.numel() == 0:
        return logits.numpy()
    if model.multilabel:  # a temperature per label
        return torch.sigmoid(logits / torch.as_tensor(model.temperature, dtype=logits.dtype)).numpy()
    return torch.softmax(logits / model.temperature, dim=-1).numpy()


def predict_embedded(
    model: TextClassifier, vectors: np.ndarray, lexical, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Probabilities of texts given as their embeddings (and TF-IDF rows, for a model with a lexical layer)."""
    source = EmbeddingBatches(vectors, np.zeros(len(vectors), dtype=np.int64), lexical)  # labels unused
    return predict_proba(model, source, device, batch_size)


def score(
    probs: np.ndarray, labels: np.ndarray, num_classes: int, thresholds=None, min_labels: int = 0
) -> dict[str, float]:
    """Loss, accuracy and macro F1 (multi-label: binary cross-entropy, subset accuracy, macro/micro/samples F1 and
    Hamming loss of the labels given at ``thresholds``)."""
    if labels.ndim == 2:
        loss = binary_log_loss(probs, labels) if len(labels) else 0.0
        return {"loss": loss, **multilabel_scores(labels, decide(probs, thresholds, min_labels))}
    predicted = probs.argmax(axis=1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "loss": float(-np.log(picked).mean()),
        "accuracy": accuracy(labels, predicted),
        "f1": macro_f1(labels, predicted, num_classes),
    }
