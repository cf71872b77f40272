"""The ONNX Runtime backend: export a checkpoint's encoder and head as ONNX graphs (fp32, or the encoder dynamically
quantized to int8), check the export against torch, and predict with ``onnxruntime``.

Needs the optional extra: ``pip install -e '.[onnx]'``. An export folder holds ``encoder.onnx`` (or
``encoder.int8.onnx``), ``head.onnx``, the tokenizer, ``lexical.pt`` (TF-IDF terms, idf and weights, for a model with
lexical features; loaded with ``weights_only=True``) and ``export.json`` (labels, windowing, the checks' results)."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from bertcls.config.settings import DataSection, TaskName
from bertcls.features.lexical import LexicalFeatures, LexicalSpec
from bertcls.model.checkpoint import Checkpoint, now_iso
from bertcls.model.classifier import Classifier
from bertcls.model.encoder import pool_windows, split_into_windows, truncated_ids, window_batches
from bertcls.runtime.errors import BertclsError
from bertcls.runtime.fileio import replace_dir, save_torch_atomic
from bertcls.runtime.layout import RunLayout
from bertcls.runtime.verdicts import processor_model
from bertcls.task import DecisionRule, Task, task_for

logger = logging.getLogger(__name__)
MANIFEST = "export.json"
FP32_MAX_DIFF = 1e-4
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_F1_DROP = 0.005
OPSET = 17


class ExportError(BertclsError):
    """An export that failed its own check."""


def require_onnx():
    """onnxruntime, or one sentence naming the extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise BertclsError(
            "The ONNX backend needs the optional onnx extra; install it with pip install -e '.[onnx]' "
            "(onnx and onnxruntime)."
        ) from None
    return onnxruntime


class BackendSpeed(BaseModel):
    """Texts/s of torch (at the precision ``predict`` would use) and of this export, on the same texts and machine."""

    model_config = ConfigDict(extra="forbid")

    machine: str
    torch_precision: str
    torch_texts_per_s: float
    onnx_texts_per_s: float

    @property
    def faster(self) -> str:
        return "onnx" if self.onnx_texts_per_s > self.torch_texts_per_s else "torch"


def choose_backend(export_dir: Path, *, best_model: str | None = None) -> tuple[str, str]:
    """``predict --backend auto``: the backend measured faster at export on this machine, and why (torch for
    ``--best-model``, without a fresh export, or when the measurement came from another processor)."""
    if best_model:
        return "torch", "--best-model names a checkpoint, which the torch backend runs"
    try:
        manifest = read_manifest(export_dir)
    except BertclsError:
        return "torch", "there is no ONNX export"
    if stale_export(manifest, export_dir):
        return "torch", "the export is older than the checkpoint"
    return pick_backend(manifest, processor_model(torch.device("cpu")))


def pick_backend(manifest: ExportManifest, machine: str) -> tuple[str, str]:
    """The backend ``manifest``'s speed measurement found faster, if it was taken on ``machine``; and why."""
    speed = manifest.speed
    if speed is None:
        return "torch", "the export holds no speed measurement (export again)"
    if speed.machine != machine:
        return "torch", "the export's speed was measured on another machine"
    ratio = speed.onnx_texts_per_s / speed.torch_texts_per_s
    return speed.faster, f"measured at export: ONNX {ratio:.2f}x torch {speed.torch_precision}"


def measure_speed(torch_model: Any, folder: Path, texts: list[str], machine: str, precision: str) -> BackendSpeed:
    """Texts/s of both backends on ``texts`` (after a warm-up pass each), best of two runs."""
    onnx_model = OnnxPredictor(folder)

    def rate(model: Any) -> float:
        model.predict_proba(texts[:16], 64)
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            model.predict_proba(texts, 64)
            best = min(best, time.perf_counter() - started)
        return len(texts) / best

    return BackendSpeed(machine=machine, torch_precision=precision, torch_texts_per_s=rate(torch_model),
                        onnx_texts_per_s=rate(onnx_model))  # fmt: skip


class ExportManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    labels: list[str]
    encoder_file: str
    head_file: str = "head.onnx"
    int8: bool
    max_seq_len: int
    windowing: dict | None = None
    normalize: bool
    lexical: LexicalSpec | None = None
    text_column: str = "text"
    label_column: str = "category"
    checkpoint: str
    created_at: str
    checks: dict[str, float] = {}
    settings: dict = {}
    temperature: float = 1.0
    task: TaskName = "multiclass"  # the graphs end in logits; the task turns them into probabilities and decisions
    temperatures: list[float] | None = None  # per label, where calibration fitted several (multi-label)
    thresholds: list[float] | None = None
    min_labels: int = 0
    label_columns: list[str] | None = None
    label_separator: str = "|"
    speed: BackendSpeed | None = None  # measured at export, on the check texts, on this machine

    def rule(self) -> DecisionRule:
        """The decision rule of the checkpoint the export was made from."""
        temperature = np.asarray(self.temperatures, dtype=np.float32) if self.temperatures else self.temperature
        thresholds = None if self.thresholds is None else tuple(self.thresholds)
        return DecisionRule(temperature, thresholds, self.min_labels)


def read_manifest(folder: Path) -> ExportManifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BertclsError(f"{folder} holds no ONNX export ({MANIFEST}); run bertcls export first.")
    try:
        manifest = ExportManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        raise BertclsError(f"{path} is damaged or from another version; run bertcls export again.") from None
    if manifest.format_version != 1:
        raise BertclsError(f"{path} has format {manifest.format_version}; this bertcls reads 1. Export again.")
    return manifest


def stale_export(manifest: ExportManifest, folder: Path) -> bool:
    """Whether the checkpoint the export was made from has been replaced since (a newer train)."""
    source = Path(manifest.checkpoint)
    return source.is_file() and source.stat().st_mtime > (Path(folder) / MANIFEST).stat().st_mtime


class _EncoderGraph(nn.Module):
    """The encoder with positional inputs, as ONNX export wants them."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder({"input_ids": input_ids, "attention_mask": attention_mask})


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], output: str, axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=inputs,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def export_graphs(model, encoder, folder: Path) -> None:
    """``encoder.onnx`` (token windows -> sentence embeddings) and ``head.onnx`` (embeddings -> head logits)."""
    encoder.precision = "fp32"
    ids = torch.full((2, 16), encoder.tokenizer.cls_token_id, dtype=torch.long)
    mask = torch.ones_like(ids)
    tokens = {0: "batch", 1: "tokens"}
    axes = {"input_ids": tokens, "attention_mask": tokens, "embedding": {0: "batch"}}
    _export(
        _EncoderGraph(encoder), (ids, mask), folder / "encoder.onnx", ["input_ids", "attention_mask"], "embedding", axes
    )
    sample = torch.zeros((2, encoder.dim))
    _export(
        model.head,
        (sample,),
        folder / "head.onnx",
        ["embedding"],
        "logits",
        {"embedding": {0: "batch"}, "logits": {0: "batch"}},
    )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the weights (per channel: per-tensor scales cost MiniLM 0.04 in cosine)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns through the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def save_lexical(model, lexical: LexicalFeatures, path: Path) -> None:
    vocabularies, tensors = lexical.to_payload()
    payload = {
        "vocabularies": vocabularies,
        "tensors": tensors,
        "weight": model.lexical.weight.detach().cpu().clone(),
        "bias": model.lexical.bias.detach().cpu().clone(),
    }
    save_torch_atomic(payload, path)


class OnnxPredictor:
    """Class probabilities from an export folder with onnxruntime (CPU), the same features as the torch model."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        ort = require_onnx()
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.labels = self.manifest.labels
        self.task: Task = task_for(self.manifest.task)
        self.rule = self.manifest.rule()
        try:
            self._open(ort, threads, AutoTokenizer)
        except Exception as exc:  # noqa: BLE001 - a damaged export is one sentence
            raise BertclsError(
                f"The ONNX export in {self.folder} cannot be loaded ({type(exc).__name__}); run bertcls export again."
            ) from None

    def _open(self, ort, threads: int | None, tokenizer_class) -> None:
        options = ort.SessionOptions()
        if threads:  # unset: onnxruntime's default, one thread per physical core
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = lambda name: ort.InferenceSession(  # noqa: E731
            str(self.folder / name), options, providers=["CPUExecutionProvider"]
        )
        self.encoder, self.head = session(self.manifest.encoder_file), session(self.manifest.head_file)
        self.tokenizer = tokenizer_class.from_pretrained(str(self.folder / "tokenizer"))
        self.lexical, self.lexical_weights = self._load_lexical()

    @property
    def temperature(self) -> float:
        return self.manifest.temperature

    def _load_lexical(self):
        if self.manifest.lexical is None:
            return None, None
        payload = torch.load(self.folder / "lexical.pt", map_location="cpu", weights_only=True)
        features = LexicalFeatures.from_payload(self.manifest.lexical, payload["vocabularies"], payload["tensors"])
        return features, (payload["weight"].numpy(), payload["bias"].numpy())

    def _windows(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        spec, length = self.manifest.windowing, self.manifest.max_seq_len
        if spec is None:
            windows, _ = truncated_ids(self.tokenizer, texts, length)  # the ids the torch encoder reads
            return windows, np.arange(len(texts))
        windows, owner, _ = split_into_windows(self.tokenizer, texts, length, spec["stride"], spec["max_chunks"])
        return windows, owner

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        windows, owner = self._windows(texts)
        vectors = np.zeros((0, 0), dtype=np.float32)
        for indices, ids, mask in window_batches(windows, batch_size, self.tokenizer.pad_token_id):
            out = self.encoder.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            if not len(vectors):
                vectors = np.zeros((len(windows), out.shape[1]), dtype=np.float32)
            vectors[indices] = out
        if self.manifest.windowing is None:
            return vectors
        return pool_windows(
            vectors, owner, len(texts), self.manifest.windowing["pooling"], normalize=self.manifest.normalize
        )

    def predict_proba(self, texts: list[str], batch_size: int) -> np.ndarray:
        distinct, position = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        distinct = distinct.tolist()
        logits = self.head.run(None, {"embedding": self.embed(distinct, batch_size)})[0].astype(np.float64)
        if self.lexical is not None:
            weight, bias = self.lexical_weights
            logits += np.asarray(self.lexical.transform(distinct) @ weight) + bias
        probs = self.task.probabilities(torch.from_numpy(logits), self.rule.temperature).numpy()
        return probs.astype(np.float32)[position]


@dataclass
class ExportReport:
    folder: Path
    checks: dict[str, float]
    files: list[str]
    speed: BackendSpeed | None = None


def check_export(
    folder: Path, torch_probs: np.ndarray, texts: list[str], truth: np.ndarray, task: Task, rule: DecisionRule, *,
    int8: bool,
) -> dict[str, float]:  # fmt: skip
    """fp32: probabilities within 1e-4 of torch's. int8: the same decisions as torch for >= 99% of the texts (the
    label, or the whole label set), and macro F1 (on the labelled texts: ``truth`` as the task's
    ``read_truth`` gives it, -1 for a label the model does not know) within 0.5 points of torch's. Raises
    :class:`ExportError` otherwise."""
    probs = OnnxPredictor(folder).predict_proba(texts, 64)
    given_torch, given_onnx = task.decide(torch_probs, rule), task.decide(probs, rule)
    known = truth >= 0 if truth.ndim == 1 else np.ones(len(truth), dtype=bool)
    f1 = lambda given: task.decision_scores(truth[known], given[known], len(probs[0]))["f1"]  # noqa: E731
    same = given_torch == given_onnx
    checks = {
        "texts": float(len(texts)),
        "max_prob_diff": float(np.abs(probs - torch_probs).max()),
        "label_agreement": float((same if same.ndim == 1 else same.all(axis=1)).mean()),
        "macro_f1_torch": f1(given_torch),
        "macro_f1_onnx": f1(given_onnx),
    }
    f1_torch, f1_onnx = checks["macro_f1_torch"], checks["macro_f1_onnx"]
    kind = "int8" if int8 else "fp32"
    if not int8 and checks["max_prob_diff"] > FP32_MAX_DIFF:
        raise ExportError(
            f"The fp32 ONNX export differs from torch by {checks['max_prob_diff']:.2e} in probability "
            f"(allowed {FP32_MAX_DIFF:.0e}); nothing was exported."
        )
    if int8 and (checks["label_agreement"] < INT8_MIN_AGREEMENT or f1_torch - f1_onnx > INT8_MAX_F1_DROP):
        raise ExportError(
            f"The int8 ONNX export agrees with torch on {100 * checks['label_agreement']:.1f}% of decisions (needs "
            f"{100 * INT8_MIN_AGREEMENT:.0f}%) with macro F1 {f1_onnx:.4f} against {f1_torch:.4f} (allowed drop "
            f"{100 * INT8_MAX_F1_DROP:.1f} points); export fp32 instead (without --int8). Nothing was exported."
        )
    logger.debug("%s export checked on %d texts: %s", kind, len(texts), checks)
    return checks


def export_model(
    ckpt: Checkpoint,
    output_root: Path,
    texts: list[str],
    truth: np.ndarray,
    torch_probs: np.ndarray,
    *,
    int8: bool,
    data: DataSection | None = None,
    torch_model: Any | None = None,
) -> ExportReport:
    """Write ``<output_root>/export/`` from ``ckpt`` after checking it on ``texts`` against ``torch_probs`` (the
    torch model's fp32 probabilities); the old export is replaced only when the new one passes."""
    require_onnx()
    output_root, data, rule = Path(output_root), data or DataSection(), ckpt.rule
    staging = RunLayout.staging_for(RunLayout(output_root).export_dir)
    staging.mkdir(parents=True)
    try:
        classifier = Classifier.load(ckpt, output_root)
        model, encoder, lexical, windowing = (
            classifier.network,
            classifier.text_encoder(),
            classifier.lexical,
            classifier.windowing,
        )
        export_graphs(model, encoder, staging)
        encoder.tokenizer.save_pretrained(str(staging / "tokenizer"))
        if lexical is not None:
            save_lexical(model, lexical, staging / "lexical.pt")
        manifest = ExportManifest(
            labels=ckpt.labels,
            encoder_file="encoder.onnx",
            int8=False,
            max_seq_len=ckpt.architecture.encoder.max_seq_len,
            windowing=None if windowing is None else vars(windowing),
            normalize=encoder.normalize,
            lexical=ckpt.architecture.lexical,
            text_column=data.text_column,
            label_column=data.label_column,
            label_columns=data.label_columns,
            label_separator=data.label_separator,
            checkpoint=str(ckpt.path),
            created_at=now_iso(),
            settings=ckpt.meta.settings,
            temperature=ckpt.temperature,
            task=ckpt.task.name,
            temperatures=None if np.ndim(rule.temperature) == 0 else np.asarray(rule.temperature).tolist(),
            thresholds=None if rule.thresholds is None else list(rule.thresholds),
            min_labels=rule.min_labels,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        checks = check_export(staging, torch_probs, texts, truth, ckpt.task, rule, int8=False)
        if int8:
            quantize_int8(staging / "encoder.onnx", staging / "encoder.int8.onnx")
            (staging / "encoder.onnx").unlink()
            manifest.encoder_file, manifest.int8 = "encoder.int8.onnx", True
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            checks = check_export(staging, torch_probs, texts, truth, ckpt.task, rule, int8=True)
        manifest.checks = checks
        if torch_model is not None:  # what predict --backend auto goes by
            precision = str(getattr(torch_model.encoder, "precision", "fp32"))
            manifest.speed = measure_speed(torch_model, staging, texts, processor_model(torch.device("cpu")), precision)
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        final = replace_dir(staging, RunLayout(output_root).export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    return ExportReport(final, checks, files, manifest.speed)
