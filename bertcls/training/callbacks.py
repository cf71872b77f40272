"""Callback base classes: the core reports progress through these, the CLI renders it. No heavy imports."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


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


class StageClock:
    """Announces a run's stages to the hooks and times them: a stage lasts from its announcement to the next one
    (or to :meth:`stop`). ``phases`` holds (stage, seconds) in order."""

    def __init__(self, hooks: WorkflowHooks):
        self.hooks = hooks
        self.phases: list[tuple[str, float]] = []
        self._current: str | None = None
        self._since = 0.0

    def __call__(self, name: str) -> None:
        self.stop()
        self._current, self._since = name, time.perf_counter()
        self.hooks.on_stage(name)

    def stop(self) -> None:
        if self._current is not None:
            self.phases.append((self._current, time.perf_counter() - self._since))
            logger.debug("Stage %r took %.2f s", self._current, self.phases[-1][1])
            self._current = None
