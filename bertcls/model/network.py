"""The classifier: encoder -> MLP head -> logits, and the typed record of a head's architecture."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bertcls.config.settings import ACTIVATIONS, ClassifierSection
from bertcls.task import DecisionRule, Task, TaskName, task_for

ACTIVATION_LAYERS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
}


class HeadSpec(BaseModel):
    """Everything needed to rebuild an MLP head before loading its weights (saved in every checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_dim: int = Field(ge=1)
    hidden_dims: list[int]
    activation: Literal[ACTIVATIONS]  # type: ignore[valid-type]
    dropout_rate: float = Field(ge=0.0, lt=1.0)
    num_classes: int = Field(ge=1)
    standardize: bool = False
    task: TaskName = "multiclass"

    @classmethod
    def from_config(
        cls, cfg: ClassifierSection, in_dim: int, num_classes: int, task: Task, *, frozen: bool = True
    ) -> HeadSpec:
        """Inputs are standardised (per-dimension mean and std of the training embeddings) only for a frozen encoder,
        whose embeddings do not move during training. A linear head (see ``classifier.head``) has no hidden layer
        and reads the embeddings as they are (its L2 penalty is what scales them)."""
        linear = cfg.resolved_head(task, frozen=frozen) == "linear"
        return cls(
            in_dim=in_dim,
            hidden_dims=[] if linear else list(cfg.hidden_dims),
            activation=cfg.activation,
            dropout_rate=cfg.dropout_rate,
            num_classes=num_classes,
            standardize=cfg.standardize_inputs and frozen and not linear,
            task=task.name,
        )

    def layers(self) -> list[dict]:
        """One entry per Linear layer: widths, activation and dropout (None for the output layer)."""
        rows, width = [], self.in_dim
        for hidden in self.hidden_dims:
            rows.append({"in": width, "out": hidden, "activation": self.activation, "dropout": self.dropout_rate})
            width = hidden
        rows.append({"in": width, "out": self.num_classes, "activation": None, "dropout": None})
        return rows


class Standardize(nn.Module):
    """``(x - mean) / std`` with statistics of the training embeddings, kept as buffers (saved with the weights)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, embeddings: torch.Tensor) -> None:
        self.mean.copy_(embeddings.mean(dim=0))
        self.std.copy_(embeddings.std(dim=0).clamp(min=1e-6) if len(embeddings) > 1 else torch.ones_like(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLPHead(nn.Module):
    """Optional input standardisation, ``hidden_dims`` blocks of Linear -> activation -> Dropout, then a Linear to
    the classes."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        self.scale = Standardize(spec.in_dim) if spec.standardize else None
        layers: list[nn.Module] = []
        width = spec.in_dim
        for hidden in spec.hidden_dims:
            layers += [nn.Linear(width, hidden), ACTIVATION_LAYERS[spec.activation](), nn.Dropout(spec.dropout_rate)]
            width = hidden
        layers.append(nn.Linear(width, spec.num_classes))
        self.net = nn.Sequential(*layers)

    @property
    def output(self) -> nn.Linear:
        """The last Linear layer (to the classes)."""
        layer = self.net[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(self.scale(embeddings) if self.scale is not None else embeddings)


def set_dropout(module: nn.Module, rate: float) -> None:
    """Change every dropout rate in place (PBT explores dropout without rebuilding the model)."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = rate


class LexicalLayer(nn.Module):
    """A linear layer over sparse TF-IDF features whose logits are added to the MLP head's (late fusion).

    It starts at zero, so training begins from the embedding head's view and adds lexical evidence as it helps."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_features, num_classes))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.is_sparse:
            return torch.sparse.mm(features, self.weight) + self.bias
        return features @ self.weight + self.bias


class TextClassifier(nn.Module):
    """A head on precomputed embeddings (frozen encoder) or on an encoder it owns (fine-tuning), plus an optional
    lexical layer whose logits are added to the head's. Its task (from the head's spec) turns logits into
    probabilities and decisions under ``rule``, which calibration replaces."""

    def __init__(
        self,
        head: MLPHead,
        encoder: nn.Module | None = None,
        lexical: LexicalLayer | None = None,
        rule: DecisionRule | None = None,
    ):
        super().__init__()
        self.head = head
        self.encoder = encoder
        self.lexical = lexical
        self.task: Task = task_for(head.spec.task)
        self.rule = rule or DecisionRule()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return self.task.probabilities(logits, self.rule.temperature)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices, or a multi-label model's boolean matrix of the labels given."""
        return self.task.decide(probs, self.rule)

    def logit_parts(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's logits and the lexical layer's (None without one); the model's output is their sum."""
        if "embeddings" in batch:
            head = self.head(batch["embeddings"])
        elif self.encoder is None:
            raise ValueError("this classifier has no encoder; pass precomputed embeddings")
        else:
            head = self.head(self.encoder(batch))
        return head, (self.lexical(batch["lexical"]) if self.lexical is not None else None)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        head, lexical = self.logit_parts(batch)
        return head if lexical is None else head + lexical


def count_parameters(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def trainable_state(model: TextClassifier) -> dict[str, torch.Tensor]:
    """A detached copy of the weights worth saving (head, plus a fine-tuned encoder)."""
    fine_tuned = model.encoder is not None and any(p.requires_grad for p in model.encoder.parameters())
    state = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    if model.lexical is not None:
        state.update({f"lexical.{k}": v for k, v in model.lexical.state_dict().items()})
    if fine_tuned and model.encoder is not None:
        state.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_trainable_state(model: TextClassifier, state: dict[str, torch.Tensor]) -> None:
    """Load what :func:`trainable_state` saved; raises ``RuntimeError`` when shapes or keys do not fit."""
    head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    model.head.load_state_dict(head)
    lexical = {k[len("lexical.") :]: v for k, v in state.items() if k.startswith("lexical.")}
    if (model.lexical is None) != (not lexical):
        raise RuntimeError(
            "the lexical layer's weights and the architecture disagree\nlexical layer present in only "
            "one of the weights and the architecture"
        )
    if model.lexical is not None:
        model.lexical.load_state_dict(lexical)
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if encoder and model.encoder is not None:
        model.encoder.load_state_dict(encoder)
