"""Streaming batch prediction: CSV chunks in, CSV chunks out, one output row per input row, in order."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import torch

from bertcls.batches import predict_embedded
from bertcls.checkpoint import Checkpoint, build_classifier
from bertcls.config import DataSection
from bertcls.data import binary_kind, require_columns
from bertcls.distributed import world
from bertcls.encoder import embed_documents
from bertcls.errors import DataError
from bertcls.fileio import atomic_path
from bertcls.labelsets import check_flag_columns, label_matrix, unknown_labels
from bertcls.metrics import accuracy, decide, macro_f1, multilabel_scores
from bertcls.precision import PrecisionCheck, for_checkpoint, log_check, measure, sample_indices

logger = logging.getLogger(__name__)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
STDIO = "-"


def escape_formula(cell: str) -> str:
    """Neutralise a text cell a spreadsheet would run as a formula; numbers are never altered."""
    if cell and cell.startswith(FORMULA_START) and not _NUMBER.match(cell.strip()):
        return "'" + cell
    return cell


def escape_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for column in columns:
        frame[column] = frame[column].map(escape_formula)
    return frame


@dataclass
class PredictOptions:
    text_column: str = "text"
    label_column: str = "category"
    encoding: str = "utf-8"
    batch_size: int = 64
    chunk_rows: int = 10_000
    top_k: int | None = None
    escape_formulas: bool = True
    min_confidence: float | None = None
    label_separator: str = "|"
    label_columns: list[str] | None = None


@dataclass
class PredictSummary:
    rows: int = 0
    empty_rows: int = 0
    true_labels: list[int] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    unseen_labels: dict[str, int] = field(default_factory=dict)
    has_labels: bool = False
    abstained: list[bool] = field(default_factory=list)
    abstaining: bool = False
    multilabel: bool = False
    true_sets: list[np.ndarray] = field(default_factory=list)  # multi-label: 0/1 rows of the labelled input
    given_sets: list[np.ndarray] = field(default_factory=list)  # multi-label: the labels given to those rows
    decisions: int = 0  # multi-label with --min-confidence: label decisions, and how many were unsure
    unsure: int = 0

    def coverage(self) -> float | None:
        """Share of the rows with text that got a prediction (``--min-confidence`` only); multi-label: share of the
        label decisions that were sure enough."""
        if not self.abstaining or not self.abstained:
            return None
        if self.multilabel:
            return 1.0 - self.unsure / max(1, self.decisions)
        return 1.0 - float(np.mean(self.abstained))

    def metrics(self, num_classes: int) -> dict[str, float] | None:
        """Accuracy and macro F1 over labelled rows (the kept ones when abstaining); labels the model never saw
        count as errors."""
        if self.multilabel:
            return self._multilabel_metrics()
        if not self.has_labels or not self.true_labels:
            return None
        y_true, y_pred = self._kept(np.array(self.true_labels), np.array(self.predicted))
        if not len(y_true):
            return {"accuracy": float("nan"), "f1": float("nan"), "rows": 0}
        return {
            "accuracy": accuracy(y_true, y_pred),
            "f1": macro_f1(y_true, y_pred, num_classes),
            "rows": int(len(y_true)),
        }

    def _kept(self, truth: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows a metric counts: all of them, or the ones not abstained on when abstaining."""
        if not self.abstaining:
            return truth, given
        kept = ~np.array(self.abstained, dtype=bool)
        return truth[kept], given[kept]

    def _multilabel_metrics(self) -> dict[str, float] | None:
        """Macro, micro and samples F1 and subset accuracy over labelled rows (the rows with no unsure label when
        abstaining)."""
        if not self.has_labels or not self.true_sets:
            return None
        truth, given = self._kept(np.vstack(self.true_sets), np.vstack(self.given_sets))
        if not len(truth):
            return {"accuracy": float("nan"), "f1": float("nan"), "rows": 0}
        return {**multilabel_scores(truth, given), "rows": int(len(truth))}


def model_labeller(model, lexical, texts: list[str], device: torch.device, batch_size: int = 256):
    """A trained model's labels for embeddings of ``texts`` (the precision guard's labeller; the texts' TF-IDF part
    is the same at any precision, so it is computed once)."""
    matrix = lexical.transform(texts) if lexical is not None else None

    def label(vectors: np.ndarray) -> np.ndarray:
        return predict_embedded(model, vectors, matrix, device, batch_size).argmax(axis=1)

    return label


class Predictor:
    """Loads a checkpoint once and turns texts into class probabilities."""

    def __init__(self, ckpt: Checkpoint, output_root: str | Path, device: torch.device, precision: str = "fp32"):
        self.ckpt = ckpt
        self.labels = ckpt.labels
        self.multilabel = ckpt.multilabel
        self.device = device
        self.model, self.encoder = build_classifier(ckpt, output_root)
        self.model.to(device)
        self.lexical = ckpt.lexical_features()
        self.windowing = ckpt.architecture.encoder.windowing()
        self.encoder.precision, self._unchecked = for_checkpoint(ckpt.meta.precision, precision, device)
        self.precision_check = PrecisionCheck(requested=self.encoder.precision, used=self.encoder.precision)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Multi-label: the labels given, by the model's per-label thresholds and ``min_labels``."""
        return decide(probs, self.model.thresholds, self.model.min_labels)

    @property
    def temperature(self) -> float:
        return self.ckpt.temperature  # a multi-label model's: the geometric mean of its per-label temperatures

    def check_precision(self, texts: list[str], batch_size: int) -> None:
        """The guard, on the first texts this model predicts at a reduced precision its training did not check."""
        sample = [texts[i] for i in sample_indices(len(texts), seed=0)]
        label = model_labeller(self.model, self.lexical, sample, self.device, batch_size)
        check, _ = measure(self.encoder, sample, self.encoder.precision, self.device, batch_size, label)
        log_check(check)
        self.encoder.precision, self.precision_check, self._unchecked = check.used, check, False

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Document vectors; under torchrun each rank embeds every size-th text and all get all of them."""
        return world().map_sharded(
            lambda part: embed_documents(self.encoder, part, batch_size, self.device, self.windowing), texts
        )

    def predict_proba(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Probabilities in input order, from the same features the model was trained on (whole-text windows and
        TF-IDF where it used them). Identical texts are run once; batches are sorted by token length."""
        distinct, position = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        distinct = distinct.tolist()
        if self._unchecked:
            self.check_precision(distinct, batch_size)
        vectors = self.embed(distinct, batch_size)
        lexical = self.lexical.transform(distinct) if self.lexical is not None else None
        return predict_embedded(self.model, vectors, lexical, self.device, batch_size)[position]


def read_chunks(source: TextIO | Path, options: PredictOptions) -> Iterator[pd.DataFrame]:
    """CSV chunks with every cell as a string; bad bytes become one clear error."""
    name = "standard input" if not isinstance(source, Path) else str(source)
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            kind = binary_kind(handle.read(4096))
        if kind is not None:
            raise DataError(f"Input {name} is not a text CSV file: it looks like {kind}; export it as CSV first.")
    try:
        reader = pd.read_csv(
            source,
            dtype=str,
            keep_default_na=False,
            chunksize=options.chunk_rows,
            encoding=options.encoding if isinstance(source, Path) else None,
        )
        for number, chunk in enumerate(reader):
            if number == 0:
                require_columns(chunk, [options.text_column], f"Input {name}")
            yield chunk
    except UnicodeDecodeError:
        raise DataError(
            f"Input {name} has bytes that are not valid {options.encoding}; pass the file's encoding with --encoding."
        ) from None
    except LookupError:
        raise DataError(f"Unknown encoding {options.encoding!r}; pass a valid one with --encoding.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"Input {name} is empty.") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"Input {name} is not a valid CSV file: {str(exc).strip()}.") from None


def abstains(confidence: np.ndarray, min_confidence: float) -> np.ndarray:
    """Rows to leave unlabelled: top probability below ``min_confidence``; at 1, every row (a softmax is never truly
    certain, though float32 rounds large margins to 1.0)."""
    return np.full(len(confidence), True) if min_confidence >= 1.0 else confidence < min_confidence


def prediction_columns(
    probs: np.ndarray, labels: list[str], top_k: int | None, empty: np.ndarray, min_confidence: float | None = None
) -> pd.DataFrame:
    """predicted_label, confidence and prob_<label> (or the top K labels); empty texts get empty cells. With
    ``min_confidence``, rows below it keep their probabilities but get no label and ``abstained`` true."""
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    predicted = np.array(labels, dtype=object)[best]
    if min_confidence is not None:
        abstain = abstains(confidence, min_confidence)
        predicted[abstain] = ""
    out = {"predicted_label": predicted, "confidence": confidence}
    if min_confidence is not None:
        out["abstained"] = np.where(abstain, "true", "false")
    if top_k:
        order = np.argsort(-probs, axis=1)[:, :top_k]
        for rank in range(top_k):
            out[f"top{rank + 1}_label"] = np.array(labels, dtype=object)[order[:, rank]]
            out[f"top{rank + 1}_prob"] = probs[np.arange(len(probs)), order[:, rank]]
    else:
        for i, label in enumerate(labels):
            out[f"prob_{label}"] = probs[:, i]
    frame = pd.DataFrame(out).astype(object)
    frame.loc[empty, :] = ""
    return frame


def unsure_labels(probs: np.ndarray, given: np.ndarray, min_confidence: float) -> np.ndarray:
    """Multi-label ``--min-confidence``: a label decision is unsure when the probability of what was decided (p for
    a label given, 1 - p for one not given) is below ``min_confidence`` (at 1, every decision)."""
    if min_confidence >= 1.0:
        return np.ones_like(given, dtype=bool)
    return np.where(given, probs, 1.0 - probs) < min_confidence


def multilabel_columns(
    probs: np.ndarray,
    names: list[str],
    given: np.ndarray,
    unsure: np.ndarray | None,
    top_k: int | None,
    empty: np.ndarray,
    separator: str,
) -> pd.DataFrame:
    """predicted_labels (joined by the separator), prob_<label> for every label and, with ``top_k``, the k most
    probable labels. With ``unsure`` (``--min-confidence``), unsure labels are left out of predicted_labels and
    named in unsure_labels, and abstained says whether the row has any."""
    labels = np.array(names, dtype=object)
    join = lambda mask: [separator.join(labels[row]) for row in mask]  # noqa: E731
    out: dict[str, object] = {"predicted_labels": join(given if unsure is None else given & ~unsure)}
    if unsure is not None:
        out["unsure_labels"] = join(unsure)
        out["abstained"] = np.where(unsure.any(axis=1), "true", "false")
    for i, label in enumerate(names):
        out[f"prob_{label}"] = probs[:, i]
    if top_k:
        order = np.argsort(-probs, axis=1)[:, :top_k]
        for rank in range(top_k):
            out[f"top{rank + 1}_label"] = labels[order[:, rank]]
            out[f"top{rank + 1}_prob"] = probs[np.arange(len(probs)), order[:, rank]]
    frame = pd.DataFrame(out).astype(object)
    frame.loc[empty, :] = ""
    return frame


def note_multilabel(
    summary: PredictSummary,
    chunk: pd.DataFrame,
    given: np.ndarray,
    unsure: np.ndarray | None,
    names: list[str],
    options: PredictOptions,
) -> None:
    """Keep the labelled rows' true and given label sets, and the unsure decisions, for the summary."""
    if unsure is not None:
        summary.abstaining = True
        summary.abstained += unsure.any(axis=1).tolist()
        summary.decisions += unsure.size
        summary.unsure += int(unsure.sum())
        given = given & ~unsure
    if summary.has_labels:
        cfg = DataSection(
            label_column=options.label_column,
            label_separator=options.label_separator,
            label_columns=options.label_columns,
        )
        check_flag_columns(chunk, cfg, "The input")
        summary.true_sets.append(label_matrix(chunk, cfg, names))
        summary.given_sets.append(given)
        for label, count in unknown_labels(chunk, cfg, names).items():
            summary.unseen_labels[label] = summary.unseen_labels.get(label, 0) + count


ProgressFn = Callable[[int], None]


DISCARD = None  # the output of a torchrun rank other than 0: nothing is written anywhere


class _Sink:
    """Where output goes: an atomic temp file, standard output, or nowhere (``DISCARD``)."""

    def __init__(self, target: str | None):
        self.target = target
        self._context = None
        self.handle: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self.target is DISCARD:
            self.handle = io.StringIO()  # emptied after every chunk by the caller's truncate
        elif self.target == STDIO:
            self.handle = sys.stdout
        else:
            self._context = atomic_path(self.target)
            tmp = self._context.__enter__()
            self.handle = open(tmp, "w", encoding="utf-8", newline="")
        return self.handle

    def __exit__(self, *exc_info) -> None:
        if self._context is None:
            self.handle.flush()
            return
        self.handle.close()
        self._context.__exit__(*exc_info)


def _labelled_indices(
    chunk: pd.DataFrame, options: PredictOptions, index: dict[str, int], keep: np.ndarray, summary: PredictSummary
) -> list[int]:
    truth = chunk[options.label_column].to_numpy()[keep]
    for label in truth:
        if label not in index:
            summary.unseen_labels[label] = summary.unseen_labels.get(label, 0) + 1
    return [index.get(label, -1) for label in truth]


def note_multiclass(
    summary: PredictSummary, chunk: pd.DataFrame, probs: np.ndarray, keep: np.ndarray, index: dict, options
) -> None:
    """Keep the abstentions and, for labelled input, the true and predicted classes for the summary."""
    if options.min_confidence is not None:
        summary.abstaining = True
        summary.abstained += abstains(probs[keep].max(axis=1), options.min_confidence).tolist()
    if summary.has_labels and keep.any():
        summary.true_labels += _labelled_indices(chunk, options, index, keep, summary)
        summary.predicted += probs[keep].argmax(axis=1).tolist()


def predict_csv(
    predictor: Predictor, source: str, target: str, options: PredictOptions, progress: ProgressFn | None = None
) -> PredictSummary:
    """Stream ``source`` (a path or ``-``) to ``target`` (a path or ``-``) chunk by chunk."""
    summary = PredictSummary(multilabel=getattr(predictor, "multilabel", False))
    index = {label: i for i, label in enumerate(predictor.labels)}
    label_columns = options.label_columns or [options.label_column]
    here = world()
    if here.distributed and source == STDIO:
        raise DataError("Under torchrun every rank reads the input file; pass --data-file FILE, not standard input.")
    if not here.is_main:
        target = DISCARD  # under torchrun the ranks predict together and rank 0 writes the one output file
    input_source: TextIO | Path = sys.stdin if source == STDIO else Path(source)
    if isinstance(input_source, Path) and not input_source.is_file():
        raise DataError(f"Input file {source} does not exist.")
    with _Sink(target) as handle:
        for number, chunk in enumerate(read_chunks(input_source, options)):
            if number == 0:
                summary.has_labels = all(c in chunk.columns for c in label_columns)
            texts = chunk[options.text_column].to_numpy()
            empty = np.array([not t.strip() for t in texts], dtype=bool)
            keep = ~empty
            probs = np.zeros((len(chunk), len(predictor.labels)), dtype=np.float32)
            if keep.any():
                probs[keep] = predictor.predict_proba(texts[keep].tolist(), options.batch_size)
            if summary.multilabel:
                given = predictor.decide(probs)
                unsure = None
                if options.min_confidence is not None:
                    unsure = unsure_labels(probs, given, options.min_confidence)
                names, sep = predictor.labels, options.label_separator
                columns = multilabel_columns(probs, names, given, unsure, options.top_k, empty, sep)
                if keep.any():
                    kept_unsure = None if unsure is None else unsure[keep]
                    note_multilabel(summary, chunk[keep], given[keep], kept_unsure, names, options)
            else:
                columns = prediction_columns(probs, predictor.labels, options.top_k, empty, options.min_confidence)
                note_multiclass(summary, chunk, probs, keep, index, options)
            original = chunk.drop(columns=[c for c in columns.columns if c in chunk.columns])
            if options.escape_formulas:
                original = escape_frame(original, list(original.columns))
            out = pd.concat([original.reset_index(drop=True), columns.reset_index(drop=True)], axis=1)
            out.to_csv(handle, header=number == 0, index=False)
            if target is DISCARD:
                handle.seek(0)
                handle.truncate()
            summary.rows += len(chunk)
            summary.empty_rows += int(empty.sum())
            if progress:
                progress(len(chunk))
        if summary.rows == 0:
            raise DataError(f"Input {source} has no data rows.")
    if summary.empty_rows:
        logger.warning("%d row(s) have empty text; they are kept with an empty prediction.", summary.empty_rows)
    return summary
