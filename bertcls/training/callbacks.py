"""Callback base classes: the core reports progress through these, the CLI renders it. No heavy imports."""

from __future__ import annotations

from typing import Any


class TrainerCallback:
    """Override what you need; steer the loop only through ``trainer.control`` (``control.stop(reason)``)."""

    def on_train_begin(self, trainer: Any) -> None: ...

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Any, done: int, total: int, loss: float) -> None: ...

    def on_epoch_end(self, trainer: Any, record: Any) -> None: ...

    def on_train_end(self, trainer: Any, result: Any) -> None: ...


class WorkflowHooks(TrainerCallback):
    """Trainer callbacks plus the stages before training."""

    def on_stage(self, name: str) -> None: ...

    def on_encode_progress(self, done: int, total: int) -> None: ...
