"""What every tracking backend does, and the backends a configuration asks for (made in the tracking process)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from bertcls.config.settings import TrackingSection
from bertcls.tracking.records import RunSpec, TrackingRecord


class Backend(Protocol):
    name: str

    @property
    def where(self) -> str: ...

    def start(self, spec: RunSpec, parent: str | None) -> str | None: ...

    def log_params(self, key: str, params: dict[str, str]) -> None: ...

    def set_tags(self, key: str, tags: dict[str, str]) -> None: ...

    def log_metrics(self, key: str, metrics: dict[str, float], step: int) -> None: ...

    def log_artifacts(self, key: str, folder: Path, prefix: str) -> None: ...

    def log_file(self, key: str, path: Path, prefix: str | None) -> None: ...

    def end(self, key: str, status: str) -> None: ...

    def record(self, key: str) -> TrackingRecord: ...


def make_backends(cfg: TrackingSection, root: Path, experiment: str) -> list[Backend]:
    backends: list[Backend] = []
    for name in cfg.backend:
        if name == "mlflow":
            from bertcls.tracking.mlflow_backend import MlflowBackend

            backends.append(MlflowBackend(cfg, root, experiment))
        else:
            from bertcls.tracking.tensorboard_backend import TensorBoardBackend

            backends.append(TensorBoardBackend(cfg, root))
    return backends
