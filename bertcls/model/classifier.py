"""A trained classifier, complete: the network (with its task and decision rule), its labels, the TF-IDF features
it was trained with, and how its encoder reads texts. Prediction, evaluation, the precision guard and the ONNX
export load and run a saved model through this one object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertcls.features.lexical import LexicalFeatures
from bertcls.inference.batches import predict_embedded
from bertcls.model.checkpoint import Checkpoint, build_classifier
from bertcls.model.encoder import Encoder, Windowing, embed_documents
from bertcls.model.network import TextClassifier
from bertcls.runtime.errors import CheckpointError
from bertcls.task import DecisionRule, Task

Labeller = Callable[[np.ndarray], np.ndarray]


@dataclass
class Classifier:
    """Built complete from a checkpoint by :meth:`load`; nothing is attached to it afterwards."""

    network: TextClassifier
    labels: list[str]
    lexical: LexicalFeatures | None
    windowing: Windowing | None  # None: a text's first max_seq_len tokens
    encoder: Encoder | None = None  # loaded when the model embeds texts itself (not through the cache)

    @classmethod
    def load(cls, ckpt: Checkpoint, output_root: str | Path, *, with_encoder: bool = True) -> Classifier:
        """The saved model (``with_encoder``: with its encoder, to embed texts; a fine-tuned one always has it)."""
        network, encoder = build_classifier(ckpt, output_root, need_encoder=with_encoder)
        windowing = ckpt.architecture.encoder.windowing()
        return cls(network, ckpt.labels, ckpt.lexical_features(), windowing, encoder)

    @property
    def task(self) -> Task:
        return self.network.task

    @property
    def rule(self) -> DecisionRule:
        return self.network.rule

    def to(self, device: torch.device) -> Classifier:
        self.network.to(device)
        return self

    def text_encoder(self) -> Encoder:
        if self.encoder is None:
            raise CheckpointError("This classifier was loaded without its encoder; load it with with_encoder=True.")
        return self.encoder

    def embed(self, texts: list[str], device: torch.device, batch_size: int) -> np.ndarray:
        """Document vectors as the model was trained on them (whole-text windows where it used them)."""
        return embed_documents(self.text_encoder(), texts, batch_size, device, self.windowing)

    def predict_embedded(
        self, vectors: np.ndarray, texts: list[str], device: torch.device, batch_size: int = 256
    ) -> np.ndarray:
        """Probabilities of ``texts`` given their document vectors (and their TF-IDF rows, when the model has a
        lexical layer): the one way a saved model turns features into probabilities."""
        rows = self.lexical.transform(texts) if self.lexical is not None else None
        return predict_embedded(self.network, vectors, rows, device, batch_size)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return self.network.decide(probs)

    def labeller(self, texts: list[str], device: torch.device, batch_size: int = 256) -> Labeller:
        """The model's labels for embeddings of ``texts`` (the precision guard's labeller; the TF-IDF part is the
        same at any precision, so it is computed once)."""
        rows = self.lexical.transform(texts) if self.lexical is not None else None

        def label(vectors: np.ndarray) -> np.ndarray:
            return predict_embedded(self.network, vectors, rows, device, batch_size).argmax(axis=1)

        return label
