"""The classifier: encoder -> MLP head -> logits."""

from __future__ import annotations

import torch
from torch import nn

from bertcls.config import ClassifierSection

ACTIVATION_LAYERS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
}


class MLPHead(nn.Module):
    """``hidden_dims`` blocks of Linear -> activation -> Dropout, then a Linear to the classes."""

    def __init__(self, in_dim: int, cfg: ClassifierSection, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in cfg.hidden_dims:
            layers += [nn.Linear(width, hidden), ACTIVATION_LAYERS[cfg.activation](), nn.Dropout(cfg.dropout_rate)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)


def set_dropout(module: nn.Module, rate: float) -> None:
    """Change every dropout rate in place (PBT explores dropout without rebuilding the model)."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = rate


class TextClassifier(nn.Module):
    """A head on precomputed embeddings (frozen encoder) or on an encoder it owns (fine-tuning)."""

    def __init__(self, head: MLPHead, encoder: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.encoder = encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "embeddings" in batch:
            return self.head(batch["embeddings"])
        if self.encoder is None:
            raise ValueError("this classifier has no encoder; pass precomputed embeddings")
        return self.head(self.encoder(batch))


def count_parameters(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
