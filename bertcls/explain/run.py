"""``bertcls explain`` without the console: load the torch model, pick the rows, explain them, write the CSV and the
page."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bertcls.config.settings import DataSection, ExplainSection
from bertcls.data.csvlines import csv_lines, row_list
from bertcls.data.labelled import read_labelled_csv, with_source_rows
from bertcls.explain.explainer import Explainer
from bertcls.explain.outputs import ErrorToExplain, ExplainedText, write_csv
from bertcls.explain.page import render_page
from bertcls.model.checkpoint import Checkpoint, load_named_checkpoint
from bertcls.model.classifier import Classifier
from bertcls.runtime.errors import BertclsError, DataError
from bertcls.runtime.fileio import write_text_atomic
from bertcls.runtime.layout import RunLayout

logger = logging.getLogger(__name__)
ProgressFn = Callable[[int], None]
ONNX_SUFFIXES = (".onnx",)


@dataclass(frozen=True)
class RowsRequest:
    """Which rows of a file to explain (``rows``: CSV line numbers, or the first ``limit`` texts with text)."""

    data_file: Path
    rows: list[int] | None = None
    limit: int = 20


def parse_rows(value: str | None) -> list[int] | None:
    """``--rows 3,17,42`` as CSV line numbers (the header is line 1)."""
    if value is None:
        return None
    try:
        rows = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--rows {value!r} is not a list of row numbers; write them like 3,17,42.") from None
    if not rows or min(rows) < 2:
        raise DataError(f"--rows {value!r} names no data row; rows are CSV line numbers, the first data row is 2.")
    return list(dict.fromkeys(rows))


def load_explained_checkpoint(best_model: str | None, root: Path) -> Checkpoint:
    """The torch model of the output root (or ``--best-model``); an ONNX export cannot be explained."""
    named = Path(best_model) if best_model else None
    if named is not None and (named.suffix in ONNX_SUFFIXES or named.resolve() == RunLayout(root).export_dir.resolve()):
        raise DataError(
            f"{best_model} is an ONNX export; explanations need the torch model (a best_model.pt checkpoint), "
            "because they follow gradients through the encoder."
        )
    return load_named_checkpoint(best_model, root)


def truth_of(frame: pd.DataFrame, data: DataSection) -> list[str | None]:
    """Each row's true label(s) when the input has the model's label column(s), else None."""
    if data.label_columns and all(c in frame.columns for c in data.label_columns):
        cells = frame[data.label_columns].to_numpy()
        return [
            data.label_separator.join(c for c, v in zip(data.label_columns, row, strict=True) if v.strip() == "1")
            for row in cells
        ]
    if data.label_column in frame.columns:
        return frame[data.label_column].tolist()
    return [None] * len(frame)


def chosen_rows(frame: pd.DataFrame, request: RowsRequest, text_column: str, source: str) -> pd.DataFrame:
    """The rows named by ``--rows`` (each must exist and have text), or the first ``limit`` rows with text."""
    with_text = frame[frame[text_column].str.strip() != ""]
    if request.rows is None:
        if with_text.empty:
            raise DataError(f"{source} has no row with text to explain.")
        return with_text.head(request.limit)
    lines = pd.Series(csv_lines(frame, np.arange(len(frame))), index=frame.index)
    missing = [r for r in request.rows if r not in set(lines)]
    if missing:
        raise DataError(
            f"{source} has no row {row_list(missing)} (its {len(lines):,} data rows run from CSV line {lines.min()} to "
            f"{lines.max()})."
        )
    if lines.duplicated().any():
        twice = sorted(set(lines[lines.duplicated()]))
        raise DataError(f"{source} names CSV line {row_list(twice)} more than once in its source_row column.")
    picked = frame.set_index(lines.to_numpy(), drop=False).loc[request.rows]
    empty = [int(r) for r, t in zip(picked.index, picked[text_column], strict=True) if not t.strip()]
    if empty:
        raise DataError(f"Row {row_list(empty)} of {source} has an empty text; there is nothing to explain.")
    return picked


@dataclass(frozen=True)
class ChosenRows:
    """The texts to explain, their CSV lines and their true labels (None where the file has none)."""

    texts: list[str]
    lines: list[int]
    truths: list[str | None]


def read_rows(request: RowsRequest, data: DataSection) -> ChosenRows:
    frame = with_source_rows(read_labelled_csv(request.data_file, data, require_label=False))
    if frame.empty:
        raise DataError(f"Data file {request.data_file} has no data rows.")
    rows = chosen_rows(frame, request, data.text_column, f"Data file {request.data_file}")
    lines = csv_lines(rows, np.arange(len(rows)))
    return ChosenRows(rows[data.text_column].tolist(), lines, truth_of(rows, data))


def explain_rows(
    explainer: Explainer, rows: ChosenRows, label: str | None, progress: ProgressFn | None = None
) -> list[ExplainedText]:
    entries = []
    for text, line, truth in zip(rows.texts, rows.lines, rows.truths, strict=True):
        entries.append(ExplainedText(explainer.explain(text, label), line, truth))
        if progress:
            progress(1)
    return entries


def write_outputs(entries: list[ExplainedText], target: Path, model: str, meaning: str) -> tuple[Path, Path]:
    """The CSV at ``target`` and the page beside it (same name, ``.html``)."""
    page = target.with_suffix(".html")
    write_csv(entries, target)
    write_text_atomic(page, render_page(entries, model, meaning))
    return target, page


def explain_errors(
    ckpt: Checkpoint, root: Path, errors: list[ErrorToExplain], explain: ExplainSection
) -> list[ErrorToExplain]:
    """``evaluate``'s most confident errors, each with the explanation of the label it got wrong."""
    if not errors:
        return []
    explainer = Explainer.configured(Classifier.load(ckpt, root), explain)
    explained = []
    for error in errors:
        try:
            explanation = explainer.explain(error.text, error.label)
        except BertclsError as exc:  # an explanation never fails the evaluation it decorates
            logger.warning("%s was not explained: %s", error.heading, exc)
            continue
        explained.append(replace(error, explanation=ExplainedText(explanation, None, error.truth)))
    return explained
