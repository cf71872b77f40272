"""Streaming batch prediction: CSV chunks in, CSV chunks out, one output row per input row, in order."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import torch

from bertcls.config.settings import DataSection
from bertcls.data.labelled import require_columns, text_encoding
from bertcls.model.checkpoint import Checkpoint
from bertcls.model.classifier import Classifier
from bertcls.runtime.distributed import world
from bertcls.runtime.errors import DataError
from bertcls.runtime.fileio import atomic_path
from bertcls.runtime.formulas import escape_table
from bertcls.runtime.precision import PrecisionGuard, log_check, measure, sample_indices
from bertcls.task import DecisionRule, PredictionColumns, Task

logger = logging.getLogger(__name__)
STDIO = "-"


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
    trained_label_columns: list[str] | None = None  # where the model's own training data held its labels


@dataclass
class PredictSummary:
    """What a prediction run saw: rows, empty texts, abstentions and, for labelled input, the true labels and the
    decisions (as the model's task encodes them) for the metrics."""

    task: Task
    rows: int = 0
    empty_rows: int = 0
    truths: list[np.ndarray] = field(default_factory=list)
    givens: list[np.ndarray] = field(default_factory=list)
    unseen_labels: dict[str, int] = field(default_factory=dict)
    has_labels: bool = False
    abstained: list[bool] = field(default_factory=list)
    abstaining: bool = False
    decisions: int = 0  # with --min-confidence: decisions made (rows, or label decisions), and how many were unsure
    unsure: int = 0

    def coverage(self) -> float | None:
        """Share of the decisions that were sure enough (``--min-confidence`` only): rows predicted, or for a
        multi-label model label decisions."""
        if not self.abstaining or not self.abstained:
            return None
        return 1.0 - self.unsure / max(1, self.decisions)

    def note(self, columns: PredictionColumns, truth: np.ndarray | None, unseen: dict[str, int]) -> None:
        """Keep the abstentions and, for labelled rows, the true labels and the decisions."""
        if self.abstaining:
            self.abstained += columns.abstained.tolist()
            self.decisions += columns.unsure.size
            self.unsure += int(columns.unsure.sum())
        if truth is not None:
            self.truths.append(truth)
            self.givens.append(columns.given)
            for label, count in unseen.items():
                self.unseen_labels[label] = self.unseen_labels.get(label, 0) + count

    def metrics(self, num_classes: int) -> dict[str, float] | None:
        """The task's metrics over labelled rows (the rows not abstained on when abstaining); a label the model never
        saw counts as an error for one label per text and is left out of a label set."""
        if not self.has_labels or not self.truths:
            return None
        truth, given = np.concatenate(self.truths), np.concatenate(self.givens)
        if self.abstaining:
            kept = ~np.array(self.abstained, dtype=bool)
            truth, given = truth[kept], given[kept]
        if not len(truth):
            return {"accuracy": float("nan"), "f1": float("nan"), "rows": 0}
        return {**self.task.decision_scores(truth, given, num_classes), "rows": int(len(truth))}


class Predictor:
    """Loads a checkpoint once (as a :class:`~bertcls.model.classifier.Classifier`) and turns texts into
    probabilities, checking a reduced precision its training did not check on the first texts it sees."""

    def __init__(self, ckpt: Checkpoint, output_root: str | Path, device: torch.device, precision: str = "fp32"):
        self.ckpt = ckpt
        self.classifier = Classifier.load(ckpt, output_root).to(device)
        self.labels = ckpt.labels
        self.task = ckpt.task
        self.device = device
        self.encoder = self.classifier.text_encoder()
        self.guard = PrecisionGuard.start(precision, device, ckpt.meta.precision)
        self.encoder.precision = self.guard.precision

    @property
    def rule(self) -> DecisionRule:
        return self.classifier.rule

    @property
    def temperature(self) -> float:
        return self.ckpt.temperature  # a multi-label model's: the geometric mean of its per-label temperatures

    def check_precision(self, texts: list[str], batch_size: int) -> None:
        """The guard, on the first texts this model predicts at a reduced precision its training did not check."""
        sample = [texts[i] for i in sample_indices(len(texts), seed=0)]
        label = self.classifier.labeller(sample, self.device, batch_size)
        check, _ = measure(self.encoder, sample, self.encoder.precision, self.device, batch_size, label)
        log_check(check)
        self.guard.decide(check)
        self.encoder.precision = check.used

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Document vectors; under torchrun each rank embeds every size-th text and all get all of them."""
        return world().map_sharded(lambda part: self.classifier.embed(part, self.device, batch_size), texts)

    def predict_proba(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Probabilities in input order, from the same features the model was trained on (whole-text windows and
        TF-IDF where it used them). Identical texts are run once; batches are sorted by token length."""
        distinct, position = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        distinct = distinct.tolist()
        if self.guard.pending:
            self.check_precision(distinct, batch_size)
        vectors = self.embed(distinct, batch_size)
        return self.classifier.predict_embedded(vectors, distinct, self.device, batch_size)[position]


def read_chunks(source: TextIO | Path, options: PredictOptions) -> Iterator[pd.DataFrame]:
    """CSV chunks with every cell as a string; bad bytes become one clear error."""
    name = "standard input" if not isinstance(source, Path) else str(source)
    encoding = options.encoding
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            head = handle.read(4096)
        encoding = text_encoding(head, encoding, f"Input {name}")
    try:
        reader = pd.read_csv(
            source,
            dtype=str,
            keep_default_na=False,
            chunksize=options.chunk_rows,
            encoding=encoding if isinstance(source, Path) else None,
        )
        for number, chunk in enumerate(reader):
            if number == 0:
                require_columns(chunk, [options.text_column], f"Input {name}")
            yield chunk
    except UnicodeDecodeError:
        raise DataError(
            f"Input {name} has bytes that are not valid {encoding}; pass the file's encoding with --encoding."
        ) from None
    except LookupError:
        raise DataError(f"Unknown encoding {options.encoding!r}; pass a valid one with --encoding.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"Input {name} is empty.") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"Input {name} is not a valid CSV file: {str(exc).strip()}.") from None


ProgressFn = Callable[[int], None]


DISCARD = None  # the output of a torchrun rank other than 0: nothing is written anywhere


class _Sink:
    """Where output goes: an atomic temp file, standard output, or nowhere (``DISCARD``)."""

    def __init__(self, target: str | None):
        self.target = target
        self._context: contextlib.AbstractContextManager[Path] | None = None
        self.handle: TextIO = io.StringIO()

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

    def __exit__(self, *exc_info: Any) -> None:
        if self._context is None:
            self.handle.flush()
            return
        self.handle.close()
        self._context.__exit__(*exc_info)


def without_nul_bytes(chunk: pd.DataFrame, source: str) -> pd.DataFrame:
    """The chunk with NUL bytes removed from its cells, and a warning saying how many cells had them."""
    text = chunk.select_dtypes(exclude="number")
    touched = text.apply(lambda column: column.str.contains("\x00", regex=False)).to_numpy().sum()
    if not touched:
        return chunk
    logger.warning("%d cell(s) of %s held NUL bytes; they were removed.", touched, source)
    cleaned = chunk.copy()
    for column in text.columns:
        cleaned[column] = cleaned[column].str.replace("\x00", "", regex=False)
    return cleaned


def note_unscored_labels(chunk: pd.DataFrame, label_columns: list[str], options: PredictOptions) -> None:
    """Warn when the input has the label column(s) the model was trained on but predict looks for others (say, a
    config.yml that names another label column), so the labels go unscored."""
    trained = options.trained_label_columns
    if trained and trained != label_columns and all(c in chunk.columns for c in trained):
        logger.warning(
            "The input has the model's label column(s) %s but the label column in effect is %s, so its labels are "
            "not scored; pass --label-column %s to score them.",
            ", ".join(trained),
            ", ".join(label_columns),
            trained[0],
        )


def refuse_overwritten_columns(chunk: pd.DataFrame, predictor: Predictor, options: PredictOptions) -> None:
    """Every input column is kept: an input column named like an output column is an error naming it."""
    empty = np.zeros((0, len(predictor.labels)), dtype=np.float32)
    outputs = predictor.task.prediction_columns(
        empty, predictor.labels, predictor.rule, options.top_k, options.min_confidence, options.label_separator
    ).frame.columns
    clash = [c for c in outputs if c in chunk.columns]
    if clash:
        raise DataError(
            f"The input already has column(s) {', '.join(map(repr, clash))}, which predict writes; rename them "
            "(or drop them) so that no input column is replaced."
        )


def predict_csv(
    predictor: Predictor, source: str, target: str | None, options: PredictOptions, progress: ProgressFn | None = None
) -> PredictSummary:
    """Stream ``source`` (a path or ``-``) to ``target`` (a path or ``-``) chunk by chunk."""
    summary = PredictSummary(predictor.task, abstaining=options.min_confidence is not None)
    here = world()
    if here.distributed and source == STDIO:
        raise DataError("Under torchrun every rank reads the input file; pass --data-file FILE, not standard input.")
    if not here.is_main:
        target = DISCARD  # under torchrun the ranks predict together and rank 0 writes the one output file
    input_source: TextIO | Path = sys.stdin if source == STDIO else Path(source)
    if isinstance(input_source, Path) and not input_source.is_file():
        raise DataError(f"Input file {source} does not exist.")
    try:
        _predict_chunks(predictor, input_source, target, options, summary, progress)
    except OSError as exc:  # pandas writes through a handle: name the file the user asked for
        if exc.filename is not None or target in (DISCARD, STDIO):
            raise
        raise OSError(exc.errno, exc.strerror, target) from exc
    if summary.empty_rows:
        logger.warning("%d row(s) have empty text; they are kept with an empty prediction.", summary.empty_rows)
    return summary


def _predict_chunks(
    predictor: Predictor,
    input_source: TextIO | Path,
    target: str | None,
    options: PredictOptions,
    summary: PredictSummary,
    progress: ProgressFn | None,
) -> None:
    source = str(input_source) if isinstance(input_source, Path) else STDIO
    cfg = DataSection(
        label_column=options.label_column, label_separator=options.label_separator, label_columns=options.label_columns
    )
    label_columns = options.label_columns or [options.label_column]
    with _Sink(target) as handle:
        for number, chunk in enumerate(read_chunks(input_source, options)):
            chunk = without_nul_bytes(chunk, source)
            if number == 0:
                summary.has_labels = all(c in chunk.columns for c in label_columns)
                if not summary.has_labels:
                    note_unscored_labels(chunk, label_columns, options)
                elif mismatch := predictor.task.input_mismatch(chunk, cfg, predictor.labels):
                    logger.warning(mismatch)
                refuse_overwritten_columns(chunk, predictor, options)
            texts = chunk[options.text_column].to_numpy()
            empty = np.array([not t.strip() for t in texts], dtype=bool)
            keep = ~empty
            probs = np.zeros((len(chunk), len(predictor.labels)), dtype=np.float32)
            if keep.any():
                probs[keep] = predictor.predict_proba(texts[keep].tolist(), options.batch_size)
            predicted = predictor.task.prediction_columns(
                probs, predictor.labels, predictor.rule, options.top_k, options.min_confidence, cfg.label_separator
            )
            truth: np.ndarray | None = None
            unseen: dict[str, int] = {}
            if summary.has_labels and keep.any():
                truth, unseen = predictor.task.read_truth(chunk[keep], cfg, predictor.labels, "The input")
            summary.note(predicted.kept(keep), truth, unseen)
            columns = predicted.frame
            columns.loc[empty, :] = ""  # empty texts keep their row, with empty cells
            original = chunk.drop(columns=[c for c in columns.columns if c in chunk.columns])
            out = pd.concat([original.reset_index(drop=True), columns.reset_index(drop=True)], axis=1)
            if options.escape_formulas:  # input cells, label-derived cells and headers alike
                out = escape_table(out)
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
