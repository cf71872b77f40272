"""What a training run tells the trackers: its settings and tags at the start, every epoch's record, and at the end
the final metrics, the calibration, the stop reason and the checkpoint's path."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bertcls.config.settings import Settings
from bertcls.features.service import EmbeddingService
from bertcls.runtime.distributed import world
from bertcls.runtime.layout import MODEL_CARD
from bertcls.runtime.redaction import redact_data
from bertcls.task.calibration import CalibrationRecord
from bertcls.tracking.records import RunSpec, bertcls_version, ending, epoch_metrics, finite_metrics, flatten
from bertcls.tracking.session import TrackedRun, Tracker
from bertcls.training.callbacks import TrainerCallback
from bertcls.training.trainer import TrainResult

logger = logging.getLogger(__name__)


def settings_params(settings: Settings) -> dict[str, str]:
    """The resolved settings, flattened, passwords masked (the API key is never dumped in clear)."""
    return flatten(redact_data(settings.model_dump(mode="json")))


def base_tags(settings: Settings, command: str) -> dict[str, Any]:
    return {
        "bertcls.version": bertcls_version(),
        "bertcls.command": command,
        "bertcls.task": settings.model.task,
        "bertcls.encoder": settings.encoder.name_or_path,
        "bertcls.fine_tuned": str(not settings.encoder.freeze).lower(),
        "bertcls.world_size": world().size,
        "bertcls.output_root": str(settings.root.absolute()),
    }


def prepared_tags(service: EmbeddingService, data_fingerprint: dict[str, str], precision: str) -> dict[str, Any]:
    """What is known once the data is split and the encoder loaded."""
    return {
        "bertcls.encoder_fingerprint": service.fingerprint,
        "bertcls.precision": precision,
        "bertcls.device": str(service.device),
        **{f"bertcls.data.{split}": fingerprint for split, fingerprint in data_fingerprint.items()},
    }


class EpochLogger(TrainerCallback):
    """Logs each epoch's record at step = its epoch: the history already there when training (re)starts, then
    every new epoch, so the tracker holds exactly the checkpoint's history."""

    def __init__(self, run: TrackedRun):
        self.run = run

    def on_train_begin(self, trainer: Any) -> None:
        for record in trainer.result.history:
            self.run.log_metrics(epoch_metrics(record), record.epoch)

    def on_epoch_end(self, trainer: Any, record: Any) -> None:
        self.run.log_metrics(epoch_metrics(record), record.epoch)


def final_metrics(metrics: dict[str, dict[str, float]], calibration: CalibrationRecord | None) -> dict[str, float]:
    """A saved model's val/test metrics (``final_val_*``, ``final_test_*``; the epoch records keep the plain names)
    and its calibration (``calibration_*``), as a train run, a trial and a member log them."""
    final = {}
    for split, values in metrics.items():
        final.update(finite_metrics(values, f"final_{split}_"))
    if calibration is not None:
        final.update(finite_metrics(calibration.model_dump(exclude={"thresholds", "temperatures"}), "calibration_"))
    return final


def log_finished(
    run: TrackedRun,
    metrics: dict[str, dict[str, float]],
    calibration: CalibrationRecord | None,
    result: TrainResult,
    checkpoint: Path,
) -> None:
    """The final val/test metrics, the calibration, the best epoch, the stop reason and the checkpoint."""
    final = final_metrics(metrics, calibration)
    final["best_epoch"] = float(result.best_epoch)
    run.log_metrics(final, result.best_epoch)
    run.set_tags({"bertcls.stop_reason": result.stop_reason, "bertcls.checkpoint": str(checkpoint.absolute())})
    card = checkpoint.with_name(MODEL_CARD)
    if card.is_file():
        run.log_file(card)


@contextlib.contextmanager
def tracked(tracker: Tracker, run: TrackedRun) -> Iterator[TrackedRun]:
    """Ends ``run`` as finished, killed (a stop request, Ctrl-C) or failed, then waits for the tracker (bounded)."""

    def finish(status: str) -> None:
        run.end(status)
        tracker.close(status)

    with ending(finish):
        yield run


def train_spec(settings: Settings, name: str, command: str = "train") -> RunSpec:
    return RunSpec(name, name, settings_params(settings), base_tags(settings, command))
