"""What a tracker is told: the run's description, its parameters and metrics, and the record kept in checkpoints."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict

from bertcls.runtime.redaction import redact

PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a parameter's value (characters)
TAG_VALUE_LIMIT = 5000


class TrackingRecord(BaseModel):
    """Where a model's run was tracked (kept in its checkpoint, shown by ``inspect``; URIs without passwords)."""

    model_config = ConfigDict(extra="forbid")

    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_uri: str | None = None
    tensorboard_dir: str | None = None

    def describe(self) -> str:
        parts = []
        if self.mlflow_run_id:
            parts.append(f"MLflow run {self.mlflow_run_id} (experiment {self.mlflow_experiment_id}, {self.mlflow_uri})")
        if self.tensorboard_dir:
            parts.append(f"TensorBoard {self.tensorboard_dir}")
        return "; ".join(parts) or "not tracked"


@dataclass(frozen=True)
class RunSpec:
    """A run to start: its name, its TensorBoard folder (relative), parameters and tags. ``attach_to``: add to that
    run if the tracker still has it (evaluate on a tracked model), else make a new one, or nothing with
    ``attach_only``; ``reuse_tag``: the run carrying this tag if one exists (a study's parent run, shared by resumed
    studies and several workers: whoever uses it ends it, never the tracking process on its own)."""

    name: str
    folder: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    attach_to: TrackingRecord | None = None
    reuse_tag: tuple[str, str] | None = None
    attach_only: bool = False


def run_name(command: str, given: str | None) -> str:
    """``tracking.run_name``, or ``<command>-<YYYYmmdd-HHMMSS>``."""
    return given or f"{command}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as dotted parameters, each value as text (lists as JSON), passwords and secrets masked."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = redact(text)[:PARAM_VALUE_LIMIT]
    return flat


def finite_metrics(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric, finite entries of a metrics dict (None and NaN are left out), keys prefixed."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def epoch_metrics(record: BaseModel) -> dict[str, float]:
    """An epoch record's metrics as logged at step = its epoch (the checkpoint's history holds the same values)."""
    values = record.model_dump()
    values.pop("epoch", None)
    return finite_metrics(values)


def bertcls_version() -> str:
    try:
        return metadata.version("bertcls")
    except metadata.PackageNotFoundError:
        return "unknown"


def exit_status(error: BaseException | None) -> str:
    """How a run ends: finished, killed (a stop request or Ctrl-C) or failed."""
    from bertcls.runtime.interrupts import Interrupted

    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "FAILED"


@contextlib.contextmanager
def ending(finish: Callable[[str], None], *, normal: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Calls ``finish`` with how the block ended (:func:`exit_status`), whether it returned or raised; an exception
    of the ``normal`` kinds (a pruned trial) ends it as finished."""
    error: BaseException | None = None
    try:
        yield
    except normal:
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        finish(exit_status(error))


def clip_tags(tags: dict[str, Any]) -> dict[str, str]:
    return {k: redact(str(v))[:TAG_VALUE_LIMIT] for k, v in tags.items() if v is not None}
