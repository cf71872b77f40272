"""``train --resume``: the state of a training run after each finished epoch, and the checks that a resumed run
is the same run (same settings, same data)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from bertcls.config.settings import DataSection, Settings
from bertcls.config.sources import flatten
from bertcls.data.labelled import Splits
from bertcls.runtime.errors import CheckpointError, DataError
from bertcls.runtime.fileio import save_torch_atomic
from bertcls.runtime.interrupts import Interrupted
from bertcls.runtime.redaction import redact_data
from bertcls.task import Task
from bertcls.training.callbacks import TrainerCallback

logger = logging.getLogger(__name__)
RUNTIME_KEYS = {"verbosity", "output_root", "model.device", "model.num_threads", "data.encoding"}


def settings_fingerprint(settings: Settings) -> dict[str, str]:
    """Every setting that shapes the run (not where or how loudly it runs), as text."""
    flat = flatten(redact_data(settings.model_dump(mode="json")))
    return {key: repr(value) for key, value in sorted(flat.items()) if key not in RUNTIME_KEYS}


def data_fingerprint(splits: Splits, cfg: DataSection, task: Task) -> dict[str, str]:
    """A hash of each split's texts and labels (label sets), in order."""
    out = {}
    for name, frame in splits.items():
        digest = hashlib.sha256()
        labels = task.label_keys(frame, cfg)
        for text, label in zip(frame[cfg.text_column], labels, strict=True):
            digest.update(text.encode("utf-8") + b"\x1f" + label.encode("utf-8") + b"\x1e")
        out[name] = f"{len(frame)} rows, sha256 {digest.hexdigest()[:16]}"
    return out


class ResumeWriter(TrainerCallback):
    """Writes the trainer's resume state atomically after every finished epoch."""

    def __init__(self, path: Path, settings_fp: dict[str, str], data_fp: dict[str, str]):
        self.path, self.settings_fp, self.data_fp = Path(path), settings_fp, data_fp

    def on_epoch_end(self, trainer, record) -> None:
        payload = {"trainer": trainer.resume_state(), "settings": self.settings_fp, "data": self.data_fp}
        save_torch_atomic(payload, self.path)
        logger.debug("Saved the resume state after epoch %d to %s", trainer.state.epoch, self.path)


def _differences(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [
        f"{k} ({saved.get(k, 'unset')} then, {now.get(k, 'unset')} now)" for k in keys if saved.get(k) != now.get(k)
    ]


def read_resume(path: Path, settings_fp: dict[str, str]) -> dict:
    """The saved run, after checking that the settings are those of the interrupted run (before any work)."""
    if not path.is_file():
        raise DataError(f"Nothing to resume: {path} does not exist (it is written after each epoch of a run).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved_settings = payload["settings"]
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one sentence
        raise CheckpointError(f"The resume state {path} cannot be read ({type(exc).__name__}).") from None
    changed = _differences(saved_settings, settings_fp)
    if changed:
        raise DataError(f"Cannot resume: the settings differ from the interrupted run's: {'; '.join(changed[:5])}.")
    return payload


def check_resume_data(payload: dict, data_fp: dict[str, str]) -> dict:
    """The saved trainer state, after checking that the data splits are those of the interrupted run."""
    changed = _differences(payload["data"], data_fp)
    if changed:
        raise DataError(f"Cannot resume: the data differ from the interrupted run's: {'; '.join(changed)}.")
    return payload["trainer"]
