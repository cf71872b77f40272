"""One checkpoint format for train, optimize, evaluate, predict and inspect.

A checkpoint is a dict of tensors plus typed metadata (:class:`CheckpointMeta`), written atomically and read only
with ``torch.load(weights_only=True)``: no pickle, no joblib. The metadata holds an :class:`Architecture` record,
the description of the weights beside it, and the model is rebuilt from that record alone; the full resolved
settings are kept for provenance (and for retraining the same configuration in cross-validation).
"""

from __future__ import annotations

import datetime as dt
import logging
import pickle
import platform
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bertcls.config.settings import Settings
from bertcls.features.lexical import VOCABULARY_KEY, LexicalFeatures, LexicalSpec
from bertcls.model.encoder import BUNDLED_ALIASES, Encoder, Windowing, export_default_encoder, fingerprint
from bertcls.model.network import HeadSpec, LexicalLayer, MLPHead, TextClassifier, load_trainable_state
from bertcls.runtime.errors import CheckpointError
from bertcls.runtime.fileio import save_torch_atomic
from bertcls.runtime.layout import RunLayout
from bertcls.runtime.precision import PrecisionCheck
from bertcls.task import DecisionRule, Task, task_for
from bertcls.task.calibration import CalibrationRecord
from bertcls.task.metrics import EpochRecord
from bertcls.tracking.records import TrackingRecord

logger = logging.getLogger(__name__)
FORMAT = "bertcls-checkpoint"
FORMAT_VERSION = 3  # 3: where the run is tracked, and more about the training data
VERSIONED_PACKAGES = ("bertcls", "torch", "transformers", "sentence-transformers", "optuna", "scikit-learn", "numpy")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncoderRef(_Record):
    """Which encoder the head sits on, and how its embeddings are made."""

    name_or_path: str
    folder: str
    fingerprint: str
    dim: int
    num_layers: int = 0
    model_type: str = "unknown"
    pooling: Literal["mean", "cls", "max"]
    normalize: bool = False
    max_seq_len: int
    fine_tuned: bool = False
    long_texts: Literal["truncate", "chunks"] = "truncate"
    chunk_stride: int = 96
    max_chunks: int = 1
    chunk_pooling: Literal["mean", "max"] = "mean"

    def windowing(self) -> Windowing | None:
        if self.long_texts == "truncate":
            return None
        return Windowing(self.chunk_stride, self.max_chunks, self.chunk_pooling)


class Architecture(_Record):
    """What the saved weights are: the loader builds the model from this record, never from the settings."""

    encoder: EncoderRef
    head: HeadSpec
    lexical: LexicalSpec | None = None


class TuningProvenance(_Record):
    """Where a tuned model came from: the study, the strategy, the trial or PBT member, and its parameters."""

    study: str
    strategy: Literal["tpe", "pbt"]
    trial: int | None = None
    member: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float | None = None


class DataProvenance(_Record):
    """What the model was trained on (for inspect and the model card)."""

    truncation: dict[str, float] = Field(default_factory=dict)
    chunking: dict[str, int] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    rows: dict[str, int] = Field(default_factory=dict)  # per split
    label_counts: dict[str, int] = Field(default_factory=dict)  # training texts per label
    fingerprint: dict[str, str] = Field(default_factory=dict)  # per split: rows and a hash of texts and labels
    excluded_rows: int = 0  # left out by data.exclude_rows
    dropped_rows: int = 0  # dropped as data.on_bad_rows drop asked
    languages: dict[str, float] = Field(default_factory=dict)  # share of training texts, estimated


class CheckpointMeta(_Record):
    format_version: int = FORMAT_VERSION
    architecture: Architecture
    settings: dict[str, Any]
    labels: list[str]
    history: list[EpochRecord] = Field(default_factory=list)
    best_epoch: int = 0
    stop_reason: str = ""
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    parameters: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""
    tuning: TuningProvenance | None = None
    data: DataProvenance = Field(default_factory=DataProvenance)
    precision: PrecisionCheck | None = None
    calibration: CalibrationRecord | None = None
    tracking: TrackingRecord | None = None  # the MLflow run / TensorBoard folder of the run that made it


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


def load_named_checkpoint(name: str | None, output_root: str | Path) -> Checkpoint:
    """``--best-model``/``--model`` as given (default ``best_model.pt``), resolved and loaded."""
    return load_checkpoint(RunLayout(Path(output_root)).checkpoint(name))


def save_checkpoint(
    path: Path, state: dict[str, torch.Tensor], meta: CheckpointMeta, lexical: LexicalFeatures | None = None
) -> Path:
    """Write atomically (temp file in the same folder + rename); lexical features go in as terms and tensors."""
    if (lexical is None) != (meta.architecture.lexical is None):
        raise ValueError("the lexical features and the architecture record disagree")
    vocabularies, idf = lexical.to_payload() if lexical is not None else ({}, {})
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state": {**state, **idf},
        "meta": meta.model_dump(mode="json"),
        VOCABULARY_KEY: vocabularies,
    }
    save_torch_atomic(payload, path)
    logger.info("Saved checkpoint %s", path)
    return Path(path)


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, torch.Tensor]
    meta: CheckpointMeta
    vocabularies: dict[str, list[str]] | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def architecture(self) -> Architecture:
        return self.meta.architecture

    @property
    def fine_tuned(self) -> bool:
        return self.meta.architecture.encoder.fine_tuned

    @property
    def temperature(self) -> float:
        """The calibrated softmax temperature (1 for a model saved without calibration)."""
        return self.meta.calibration.temperature if self.meta.calibration else 1.0

    @property
    def task(self) -> Task:
        return task_for(self.architecture.head.task)

    @property
    def min_labels(self) -> int:
        return int(self.meta.settings.get("classifier", {}).get("min_labels", 0))

    @property
    def rule(self) -> DecisionRule:
        """How the model decides: the calibrated temperature(s), per-label thresholds and ``min_labels``."""
        record = self.meta.calibration
        rule = (
            DecisionRule(min_labels=self.min_labels)
            if record is None
            else DecisionRule.calibrated(record, self.min_labels)
        )
        if self.task.per_label_thresholds and rule.thresholds is None:  # none stored: 0.5 for every label
            rule = rule.with_calibration(rule.temperature, [0.5] * len(self.meta.labels))
        return rule

    def lexical_features(self) -> LexicalFeatures | None:
        """The fitted TF-IDF vectorizers the model was trained with (None when it uses none)."""
        spec = self.architecture.lexical
        if spec is None:
            return None
        if not self.vocabularies or any(len(v) == 0 for v in self.vocabularies.values()):
            raise CheckpointError(f"{self.path} records lexical features but holds no vocabulary; retrain it.")
        sizes = {kind: len(terms) for kind, terms in self.vocabularies.items()}
        if sizes.get("word", 0) != spec.num_word_features or sizes.get("char", 0) != spec.num_char_features:
            raise CheckpointError(f"{self.path} holds a vocabulary that does not fit its architecture record.")
        return LexicalFeatures.from_payload(spec, self.vocabularies, self.state)

    def trained_settings(self, output_root: str | Path) -> Settings:
        """The settings the model was trained with (no environment or YAML involved), at ``output_root``. Where
        they could disagree with the architecture record (how long texts are read, lexical features), the record
        wins: it describes the weights."""
        ref = self.architecture.encoder
        windowing = {
            "long_texts": ref.long_texts,
            "chunk_stride": ref.chunk_stride,
            "max_chunks": ref.max_chunks,
            "chunk_pooling": ref.chunk_pooling,
        }
        settings = dict(self.meta.settings)
        settings["encoder"] = {**settings.get("encoder", {}), **windowing}
        settings["classifier"] = {
            **settings.get("classifier", {}),
            "lexical_features": self.architecture.lexical is not None,
        }
        try:
            return Settings.model_validate({**settings, "output_root": str(output_root)})
        except ValidationError as exc:
            raise CheckpointError(
                f"{self.path} holds settings this bertcls cannot read ({_first_error(exc)})."
            ) from None


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


MAX_META_VALUES = 1_000_000  # a real checkpoint's metadata holds a few thousand (settings, history, labels)


def expanded_count(value: object) -> int:
    """How many values ``value`` holds once every shared list or dict is expanded (as ``json.dumps`` or a renderer
    would), counted without expanding: the pickle format behind ``torch.load`` can share one list a billion times
    in a few hundred bytes."""
    sizes: dict[int, int] = {}

    def count(item: object) -> int:
        if not isinstance(item, (dict, list, tuple)):
            return 1
        if id(item) not in sizes:
            sizes[id(item)] = 1  # a container that holds itself counts once
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else list(item)
            sizes[id(item)] = 1 + sum(count(child) for child in children)
        return sizes[id(item)]

    return count(value)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


def upgrade_v1(meta: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept no architecture record: rebuild it from the settings it saved, as format 1's loader did."""
    config, encoder, extra = dict(meta["config"]), dict(meta["encoder"]), meta.get("extra") or {}
    config["classifier"] = {"class_weights": "none", **config["classifier"]}  # format 1 had no class weights
    classifier = config["classifier"]
    head = {
        "in_dim": encoder["dim"],
        "hidden_dims": classifier["hidden_dims"],
        "activation": classifier["activation"],
        "dropout_rate": classifier["dropout_rate"],
        "num_classes": len(meta["labels"]),
    }
    tuning = None
    if "study" in extra:
        tuning = {
            key: extra[key]
            for key in ("study", "strategy", "trial", "member", "params", "lineage", "seconds")
            if key in extra
        }
    return {
        "format_version": 1,
        "architecture": {"encoder": encoder, "head": head},
        "settings": config,
        "labels": meta["labels"],
        "history": meta.get("history", []),
        "best_epoch": meta.get("best_epoch") or 0,
        "stop_reason": meta.get("stop_reason", ""),
        "metrics": meta.get("metrics", {}),
        "parameters": meta.get("parameters", {}),
        "versions": meta.get("versions", {}),
        "created_at": meta.get("created_at", ""),
        "tuning": tuning,
        "data": {"truncation": extra.get("truncation", {}), "warnings": extra.get("data_warnings", [])},
    }


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise CheckpointError(f"Checkpoint {path} {what}.")
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bertcls checkpoint.")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this bertcls reads ({FORMAT_VERSION}); "
            "upgrade bertcls."
        )
    raw_meta, state = payload.get("meta"), payload.get("state")
    if not isinstance(raw_meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a bertcls checkpoint (no metadata or weights).")
    try:
        too_large = expanded_count(raw_meta) > MAX_META_VALUES
    except RecursionError:
        too_large = True
    if too_large:
        raise CheckpointError(
            f"{path} has metadata of more than {MAX_META_VALUES:,} values (or nested too deeply) once its shared "
            "parts are expanded; it was not written by bertcls."
        )
    try:
        meta = CheckpointMeta.model_validate(upgrade_v1(raw_meta) if version == 1 else raw_meta)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} has incomplete format-{version} metadata (missing {exc}).") from None
    except ValidationError as exc:
        raise CheckpointError(f"{path} has invalid metadata ({_first_error(exc)}).") from None
    vocabularies = payload.get(VOCABULARY_KEY) or {}
    if not isinstance(vocabularies, dict) or not all(
        isinstance(v, list) and all(isinstance(word, str) for word in v) for v in vocabularies.values()
    ):
        raise CheckpointError(f"{path} has an invalid lexical vocabulary.")
    return Checkpoint(path, state, meta, vocabularies)


def encoder_folder_for(ref: EncoderRef, output_root: str | Path) -> Path:
    """The local encoder a checkpoint refers to (the bundled default is re-exported if missing)."""
    if ref.name_or_path.lower() in BUNDLED_ALIASES:
        stored = Path(ref.folder)
        return stored if stored.is_dir() else export_default_encoder(output_root)
    return Path(ref.folder)


def verify_encoder(ref: EncoderRef, folder: Path) -> tuple[bool, str]:
    """Whether the local encoder still has the fingerprint recorded in the checkpoint."""
    if not folder.is_dir():
        return False, "missing"
    actual = fingerprint(folder)
    return actual == ref.fingerprint, actual


def _mismatch_reason(exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__).rstrip(".")


def load_weights(model: TextClassifier, ckpt: Checkpoint) -> None:
    """Load the checkpoint's weights into a model built from its architecture record."""
    try:
        load_trainable_state(model, ckpt.state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"The weights in {ckpt.path} do not fit the architecture it records ({_mismatch_reason(exc)}); "
            "the file is damaged or was written by a faulty tool, so retrain or re-export it."
        ) from None


def build_classifier(
    ckpt: Checkpoint, output_root: str | Path, *, need_encoder: bool = True
) -> tuple[TextClassifier, Encoder | None]:
    """Rebuild the model from its architecture record; a frozen checkpoint refuses an encoder whose weights changed."""
    arch = ckpt.architecture
    encoder = None
    if need_encoder or ckpt.fine_tuned:
        folder = encoder_folder_for(arch.encoder, output_root)
        matches, actual = verify_encoder(arch.encoder, folder)
        if not matches and not ckpt.fine_tuned:
            raise CheckpointError(
                f"The encoder at {folder} does not match the one {ckpt.path.name} was trained with "
                f"(fingerprint {arch.encoder.fingerprint[:12]}, found {actual[:12]}); restore that encoder or retrain."
            )
        encoder = Encoder(folder, arch.encoder.max_seq_len, arch.encoder.pooling)
    lexical = None if arch.lexical is None else LexicalLayer(arch.lexical.num_features, arch.head.num_classes)
    model = TextClassifier(MLPHead(arch.head), encoder, lexical, ckpt.rule)
    load_weights(model, ckpt)
    model.eval()
    return model, encoder
