"""One checkpoint format for train, optimize, evaluate, predict and inspect.

A checkpoint is a dict of tensors plus plain metadata, written atomically and read only with
``torch.load(weights_only=True)``: no pickle, no joblib.
"""

from __future__ import annotations

import datetime as dt
import logging
import pickle
import zipfile
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bertcls.config import ClassifierSection
from bertcls.encoder import BUNDLED_ALIASES, Encoder, export_default_encoder, fingerprint
from bertcls.errors import CheckpointError
from bertcls.fileio import atomic_path
from bertcls.model import MLPHead, TextClassifier
from bertcls.training import load_trainable_state

logger = logging.getLogger(__name__)
FORMAT = "bertcls-checkpoint"
FORMAT_VERSION = 1
VERSIONED_PACKAGES = ("bertcls", "torch", "transformers", "sentence-transformers", "optuna", "scikit-learn", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def resolve_checkpoint_path(name: str, output_root: str | Path) -> Path:
    """A bare file name resolves under ``<output_root>/best_trials/``."""
    path = Path(name)
    if len(path.parts) == 1 and not path.exists():
        return Path(output_root) / "best_trials" / path
    return path


def load_named_checkpoint(name: str | None, output_root: str | Path) -> "Checkpoint":
    """``--best-model``/``--model`` as given (default ``best_model.pt``), resolved and loaded."""
    return load_checkpoint(resolve_checkpoint_path(name or "best_model.pt", output_root))


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write atomically (temp file in the same folder + rename)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "state": state, "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    logger.info("Saved checkpoint %s", path)
    return Path(path)


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def fine_tuned(self) -> bool:
        return bool(self.meta["encoder"]["fine_tuned"])


def _read_payload(path: Path) -> Any:
    if not zipfile.is_zipfile(path):  # every checkpoint torch.save writes is a zip archive
        raise CheckpointError(f"{path} is corrupt, truncated or not a checkpoint (not a PyTorch archive).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds pickled Python objects that bertcls refuses to load (only tensors and plain data are safe)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds (KeyError, RuntimeError, EOFError...) on bad files
        raise CheckpointError(f"{path} is corrupt, truncated or not a checkpoint ({type(exc).__name__}).") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bertcls checkpoint.")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this bertcls reads ({FORMAT_VERSION}); upgrade bertcls."
        )
    return Checkpoint(path, payload["state"], payload["meta"])


def encoder_folder_for(meta: dict[str, Any], output_root: str | Path) -> Path:
    """The local encoder a checkpoint refers to (the bundled default is re-exported if missing)."""
    encoder_meta = meta["encoder"]
    if encoder_meta["name_or_path"].lower() in BUNDLED_ALIASES:
        stored = Path(encoder_meta["folder"])
        return stored if stored.is_dir() else export_default_encoder(Path(output_root))
    return Path(encoder_meta["folder"])


def verify_encoder(meta: dict[str, Any], folder: Path) -> tuple[bool, str]:
    """Whether the local encoder still has the fingerprint recorded in the checkpoint."""
    if not folder.is_dir():
        return False, "missing"
    actual = fingerprint(folder)
    return actual == meta["encoder"]["fingerprint"], actual


def build_classifier(ckpt: Checkpoint, output_root: str | Path, need_encoder: bool = True) -> tuple[TextClassifier, Encoder | None]:
    """Rebuild the model; a frozen checkpoint refuses an encoder whose weights changed."""
    meta = ckpt.meta
    head_cfg = ClassifierSection(**meta["config"]["classifier"])
    head = MLPHead(meta["encoder"]["dim"], head_cfg, len(ckpt.labels))
    encoder = None
    if need_encoder or ckpt.fine_tuned:
        folder = encoder_folder_for(meta, output_root)
        matches, actual = verify_encoder(meta, folder)
        if not matches and not ckpt.fine_tuned:
            raise CheckpointError(
                f"The encoder at {folder} does not match the one {ckpt.path.name} was trained with "
                f"(fingerprint {meta['encoder']['fingerprint'][:12]}, found {actual[:12]}); restore that encoder or retrain."
            )
        encoder = Encoder(folder, meta["encoder"]["max_seq_len"], meta["encoder"]["pooling"])
    model = TextClassifier(head, encoder)
    load_trainable_state(model, ckpt.state)
    model.eval()
    return model, encoder
