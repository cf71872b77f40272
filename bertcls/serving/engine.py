"""The model a server runs: the :class:`~bertcls.model.classifier.Classifier` that ``bertcls predict`` runs (or the
ONNX export that ``predict --backend onnx`` runs), loaded once, warmed, and predicting texts exactly as ``predict``
does (the same probabilities, decisions and abstentions)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel

from bertcls.config.settings import ExplainSection, Settings
from bertcls.runtime.errors import CheckpointError, DataError
from bertcls.runtime.layout import RunLayout
from bertcls.task import DecisionRule, Task

if TYPE_CHECKING:
    from bertcls.explain.explainer import Explainer, Explanation
    from bertcls.model.checkpoint import Checkpoint

logger = logging.getLogger(__name__)


class ProbabilityModel(Protocol):
    """What both backends offer: labels, the task and its decision rule, and probabilities for texts."""

    labels: list[str]
    task: Task

    @property
    def rule(self) -> DecisionRule: ...

    def predict_proba(self, texts: list[str], batch_size: int) -> np.ndarray: ...


class TextPrediction(BaseModel):
    """One text's prediction, as ``bertcls predict`` writes it in its columns."""

    label: str | None  # single-label: the label (None when abstained or for an empty text); multi-label: None
    labels: list[str]  # the labels given (single-label: the one label; none when abstained)
    confidence: float | None  # single-label: the top calibrated probability; multi-label: None
    probabilities: dict[str, float]  # every label's calibrated probability (empty for an empty text)
    abstained: bool  # below --min-confidence (multi-label: some label decision was unsure)
    unsure_labels: list[str] | None = None  # multi-label with --min-confidence: the labels left undecided


@dataclass
class LoadedModel:
    """A model ready to serve, with what ``GET /v1/model`` says of it."""

    predictor: ProbabilityModel
    info: dict[str, Any]
    batch_size: int  # texts per encoder batch inside one server batch, as predict uses
    min_confidence: float | None
    separator: str
    checkpoint: Checkpoint | None = None  # the torch model's checkpoint (None for an ONNX export)
    root: Path | None = None
    explaining: ExplainSection = field(default_factory=ExplainSection)  # how explain() explains
    _explainer: Explainer | None = None
    _explaining: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return str(self.info.get("name", "model"))

    def explain(self, texts: list[str], label: str | None, steps: int | None) -> list[Explanation]:
        """Explanations of ``texts``, one text at a time on this model's explainer (built on first use, beside the
        predictor; it runs on the CPU in fp32)."""
        if self.checkpoint is None or self.root is None:
            raise CheckpointError(
                "Explanations need the torch model; this server runs the ONNX export (serve --backend torch explains)."
            )
        if steps is not None and steps > self.explaining.max_steps:
            raise DataError(f"steps ({steps}) must be at most explain.max_steps ({self.explaining.max_steps}).")
        with self._explaining:  # one explanation at a time, also when a cancelled request's thread runs on
            if self._explainer is None:
                from bertcls.explain.explainer import Explainer
                from bertcls.model.classifier import Classifier

                model = Classifier.load(self.checkpoint, self.root)
                self._explainer = Explainer.configured(model, self.explaining)
            if label is not None:
                self._explainer.label_index(label)
            return [self._explainer.explain(text, label, steps) for text in texts]

    def predict(self, texts: list[str]) -> list[TextPrediction]:
        """Predictions in input order; an empty text gets an empty prediction, as in ``predict``'s output."""
        predictor, names = self.predictor, list(self.predictor.labels)
        keep = np.array([bool(t.strip()) for t in texts], dtype=bool)
        probs = np.zeros((len(texts), len(names)), dtype=np.float32)
        if keep.any():
            probs[keep] = predictor.predict_proba([t for t, k in zip(texts, keep, strict=True) if k], self.batch_size)
        columns = predictor.task.prediction_columns(
            probs, names, predictor.rule, None, self.min_confidence, self.separator
        )
        given = predictor.task.decided_labels(columns, names)
        frame = {column: columns.frame[column].tolist() for column in columns.frame.columns}
        out = []
        for row in range(len(texts)):
            if not keep[row]:
                out.append(
                    TextPrediction.model_construct(
                        label=None, labels=[], confidence=None, probabilities={}, abstained=False, unsure_labels=None
                    )
                )
                continue
            unsure = frame["unsure_labels"][row] if "unsure_labels" in frame else None
            out.append(
                TextPrediction.model_construct(  # the types are built right here: no validation pass
                    label=str(frame["predicted_label"][row]) or None if "predicted_label" in frame else None,
                    labels=given[row],
                    confidence=float(frame["confidence"][row]) if "confidence" in frame else None,
                    probabilities={name: float(probs[row, k]) for k, name in enumerate(names)},
                    abstained=bool(columns.abstained[row]),
                    unsure_labels=None if unsure is None else [u for u in str(unsure).split(self.separator) if u],
                )
            )
        return out


def load_model(settings: Settings, best_model: str | None) -> LoadedModel:
    """Load the configured backend's model and warm it (one text through every stage), so that the first request
    does not pay for the start; a missing or broken model is one sentence (a :class:`BertclsError`)."""
    serve, root = settings.serve, settings.root
    if serve.backend == "onnx":
        predictor, info = _load_onnx(settings, best_model)
    else:
        predictor, info = _load_torch(settings, best_model)
    separator, text_column = str(info.pop("_separator", "|")), str(info.pop("_text_column", "text"))
    checkpoint = info.pop("_checkpoint", None)
    model = LoadedModel(
        predictor, info, settings.encoder.encode_batch_size, serve.min_confidence, separator, checkpoint, root,
        settings.explain,
    )  # fmt: skip
    model.predict(warm_up_texts(RunLayout(root).split_file("val"), text_column))
    logger.info("Loaded %s (%s backend) from %s", model.name, serve.backend, root)
    return model


def _load_torch(settings: Settings, best_model: str | None) -> tuple[ProbabilityModel, dict[str, Any]]:
    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.model.encoder import pick_device
    from bertcls.model.inspection import describe_checkpoint

    root = settings.root
    ckpt = load_named_checkpoint(best_model, root)
    predictor = Predictor(ckpt, root, pick_device(settings.model.device), settings.model.precision)
    info = {"name": ckpt.path.name, "backend": "torch", **describe_checkpoint(ckpt, root)}
    trained = ckpt.trained_settings(root).data
    info["_separator"], info["_text_column"] = trained.label_separator, trained.text_column
    info["_checkpoint"] = ckpt
    return predictor, info


def _load_onnx(settings: Settings, best_model: str | None) -> tuple[ProbabilityModel, dict[str, Any]]:
    from bertcls.inference.onnx_backend import OnnxPredictor

    if best_model:
        raise DataError("--best-model does not apply to --backend onnx, which serves <output_root>/export/.")
    predictor = OnnxPredictor(RunLayout(settings.root).export_dir, settings.serve.threads)
    manifest = predictor.manifest
    info = {
        "name": f"ONNX export of {manifest.checkpoint.rsplit('/', 1)[-1]}",
        "backend": "onnx",
        **manifest.model_dump(mode="json", exclude={"settings"}),
    }
    info["_separator"], info["_text_column"] = manifest.label_separator, manifest.text_column
    return predictor, info


WARM_UP_TEXTS = 64


def warm_up_texts(val_file: Path, text_column: str) -> list[str]:
    """Texts for the first pass: the model's own validation texts where they are at hand (a reduced precision
    that training did not check is then checked on real texts, not on one word), else one word."""
    try:
        frame = pd.read_csv(val_file, dtype=str, keep_default_na=False, nrows=WARM_UP_TEXTS)
        texts = [t for t in frame[text_column].tolist() if t.strip()]
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        texts = []
    return texts or ["warm-up"]
