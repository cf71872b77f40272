"""A fresh model and trainer for one run (train, a TPE trial, a PBT member, a cross-validation fold), and a model
rebuilt around saved weights."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from bertcls.config.settings import ClassifierSection, Settings
from bertcls.features.service import EmbeddingService
from bertcls.features.sets import FeatureSet
from bertcls.inference.batches import EmbeddingBatches
from bertcls.model.fast_dropout import use_fast_dropout
from bertcls.model.network import HeadSpec, LexicalLayer, MLPHead, TextClassifier, load_trainable_state
from bertcls.runtime.distributed import SINGLE, Parallel
from bertcls.runtime.errors import ConfigError
from bertcls.runtime.memory import MemoryManager, default_probe, reuse_freed_memory
from bertcls.task import DecisionRule, Task, task_for
from bertcls.training.convex import ConvexTrainer
from bertcls.training.trainer import Trainer, TrainingPlan

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def head_spec(cfg: ClassifierSection, dim: int, num_classes: int, task: Task, *, frozen: bool = True) -> HeadSpec:
    if cfg.bert_hidden_size != dim:
        raise ConfigError(
            f"classifier.bert_hidden_size is {cfg.bert_hidden_size} but the encoder gives {dim}-dimensional "
            "embeddings; "
            f"set classifier.bert_hidden_size: {dim}."
        )
    return HeadSpec.from_config(cfg, dim, num_classes, task, frozen=frozen)


def make_trainer(
    settings: Settings, features: FeatureSet, service: EmbeddingService, num_classes: int, ranks: Parallel = SINGLE
) -> Trainer:
    """A fresh model and trainer for one run (a fold, a trial or a population member share this); ``ranks``: the
    torchrun processes that train it together (fine-tuning only)."""
    device = service.device
    seed_everything(settings.model.seed)  # here, so a cold run (which loads the encoder) equals a warm one
    encoder = None
    if features.fine_tune:
        encoder = service.encoder
        encoder.set_trainable(freeze=False, unfreeze_last_n_layers=settings.encoder.unfreeze_last_n_layers)
        if device.type == "cpu":
            reuse_freed_memory()
            swapped = use_fast_dropout(encoder.transformer)
            logger.debug("Fine-tuning with bertcls's CPU dropout%s", " and attention" if swapped else "")
    lexical = None
    if features.lexical is not None:
        lexical = LexicalLayer(features.lexical.spec.num_features, num_classes)
    task = task_for(settings.model.task)
    spec = head_spec(settings.classifier, service.dim, num_classes, task, frozen=not features.fine_tune)
    rule = DecisionRule(min_labels=settings.classifier.min_labels)
    model = TextClassifier(MLPHead(spec), encoder, lexical, rule)
    memory = MemoryManager(
        settings.memory, settings.model.batch_size_for(fine_tune=features.fine_tune), default_probe(device)
    )
    train = features.sources["train"]
    if model.head.scale is not None:  # only a frozen encoder's head standardises: its inputs are embeddings
        assert isinstance(train, EmbeddingBatches)
        model.head.scale.fit(train.embeddings)
    task.init_output(model.head.output.bias, train.labels)
    weights = None
    if settings.classifier.resolved_class_weights(task) == "balanced":
        weights = task.balanced_weights(train.labels, num_classes)
    args = (model, train, features.sources["val"], TrainingPlan.of(settings, service.precision), memory, device)
    if settings.classifier.resolved_head(task, frozen=not features.fine_tune) == "linear":
        cfg = settings.classifier
        logger.info(
            "Linear head fitted by L-BFGS (classifier.linear_l2 %g): hidden_dims, dropout, the optimizer settings "
            "and the batch size do not apply to it",
            cfg.linear_l2,
        )
        penalty = cfg.linear_embedding_penalty
        return ConvexTrainer(*args, weights, ranks, l2=cfg.linear_l2, embedding_penalty=penalty)
    return Trainer(*args, weights, ranks)


def rebuild_model(
    settings: Settings, service: EmbeddingService, num_classes: int, state: dict[str, torch.Tensor]
) -> TextClassifier:
    """The model ``settings`` describe, holding ``state`` (a fine-tuned state brings the service's encoder along)."""
    encoder = service.encoder if any(k.startswith("encoder.") for k in state) else None
    lexical = None
    if any(k.startswith("lexical.") for k in state):
        lexical = LexicalLayer(state["lexical.weight"].shape[0], num_classes)
    task = task_for(settings.model.task)
    spec = head_spec(settings.classifier, service.dim, num_classes, task, frozen=encoder is None)
    rule = DecisionRule(min_labels=settings.classifier.min_labels)
    model = TextClassifier(MLPHead(spec), encoder, lexical, rule)
    load_trainable_state(model, state)
    return model.to(service.device).eval()
