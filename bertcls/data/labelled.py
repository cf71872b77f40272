"""Reading, checking and splitting labelled CSV data. Nothing is dropped silently."""

from __future__ import annotations

import codecs
import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bertcls.config.settings import DataSection
from bertcls.data.csvlines import SOURCE_ROW, csv_lines, row_list
from bertcls.runtime.errors import DataError
from bertcls.runtime.fileio import write_csv_atomic
from bertcls.runtime.layout import SPLIT_NAMES, RunLayout

if TYPE_CHECKING:
    from bertcls.task import Task

logger = logging.getLogger(__name__)
LINE_STARTS = "line_starts"  # frame.attrs key: the physical line of each record
MAX_LINE = 2**53  # CSV line numbers beyond this are not exact as floats
# what a merging data.on_conflicting_labels policy gives the rows of a conflicting text
MERGE_POLICIES = {"majority": "their text's majority label", "union": "the union of their text's label sets"}


def resolve_data_path(path: str, output_root: str | Path) -> Path:
    """A relative path resolves against the working directory first, then ``<output_root>/data/``."""
    candidate = Path(path)
    if candidate.exists():
        return candidate
    if candidate.is_absolute():
        raise DataError(f"Data file {path} does not exist.")
    under_root = RunLayout(Path(output_root)).data_dir / candidate
    if under_root.exists():
        return under_root
    raise DataError(f"Data file {path} was not found (looked in the working directory and {under_root.parent}).")


BINARY_SIGNATURES = {
    b"PK\x03\x04": "a zip archive (an .xlsx or .docx file?)",
    b"\xd0\xcf\x11\xe0": "an old Office document (an .xls file?)",
    b"%PDF": "a PDF",
    b"\x1f\x8b": "a gzip archive",
    b"SQLite format 3": "an SQLite database",
}


# byte-order marks, longest first (a UTF-32 LE mark starts like a UTF-16 LE one)
BYTE_ORDER_MARKS = {
    b"\xff\xfe\x00\x00": "utf-32",
    b"\x00\x00\xfe\xff": "utf-32",
    b"\xef\xbb\xbf": "utf-8-sig",
    b"\xff\xfe": "utf-16",
    b"\xfe\xff": "utf-16",
}
# bytes that text (in any 8-bit encoding) almost never holds: controls other than tab, line feed, carriage return
CONTROL_BYTES = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])
MAX_CONTROL_SHARE = 0.05  # random bytes hold about 11 %
MIN_CONTROL_BYTES = 16  # a few stray NUL bytes in a short text file are removed with a warning, not called binary


def bom_encoding(raw: bytes) -> str | None:
    """The encoding a byte-order mark at the start of ``raw`` names (a codec that drops the mark), or None."""
    for mark, encoding in BYTE_ORDER_MARKS.items():
        if raw.startswith(mark):
            return encoding
    return None


def binary_kind(raw: bytes) -> str | None:
    """What a file that is not text is, from its first bytes (None for text, including text that starts with a
    byte-order mark)."""
    for signature, kind in BINARY_SIGNATURES.items():
        if raw.startswith(signature):
            return kind
    head = raw[:4096]
    if not head or bom_encoding(head) is not None:
        return None
    controls = len(head) - len(head.translate(None, delete=CONTROL_BYTES))
    if controls > max(MIN_CONTROL_BYTES, len(head) * MAX_CONTROL_SHARE):
        return "a binary file (or UTF-16/32 text without a byte-order mark: then pass --encoding utf-16)"
    return None


def is_wide(encoding: str) -> bool:
    """Whether ``encoding`` is UTF-16 or UTF-32 (whose text is full of NUL bytes), however it is spelled."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    return name.startswith(("utf-16", "utf-32"))


def encoding_for(raw: bytes, encoding: str, source: str) -> str:
    """The encoding to read with: the one a byte-order mark names (said in the log when it is not ``encoding``'s
    own), else ``encoding``."""
    marked = bom_encoding(raw)
    if marked is None:
        return encoding
    if marked != "utf-8-sig" and marked != encoding.lower().replace("_", "-"):
        logger.info("%s starts with a %s byte-order mark; it is read as %s.", source, marked.upper(), marked)
    return marked


def text_encoding(head: bytes, encoding: str, source: str) -> str:
    """The encoding to read a file with, from its first bytes (:func:`encoding_for`); a file that is not text is
    one sentence (UTF-16/32 text is full of NUL bytes, so it is never called binary)."""
    encoding = encoding_for(head, encoding, source)
    kind = None if is_wide(encoding) else binary_kind(head)
    if kind is not None:
        raise DataError(f"{source} is not a text CSV file: it looks like {kind}; export it as CSV first.")
    return encoding


def decode_bytes(raw: bytes, encoding: str, source: str) -> str:
    """Decode a file's bytes, naming the line of the first bad byte and the ``--encoding`` option. A file that is
    not text at all (a spreadsheet, an archive) is named as such instead of being decoded as latin-1 noise; NUL
    bytes in a text file are removed with a warning."""
    encoding = text_encoding(raw, encoding, source)
    if b"\x00" in raw and not is_wide(encoding):
        logger.warning("%s holds %d NUL byte(s); they were removed.", source, raw.count(b"\x00"))
        raw = raw.replace(b"\x00", b"")
    try:
        return raw.decode(encoding)
    except LookupError:
        raise DataError(f"Unknown encoding {encoding!r}; pass a valid one with --encoding.") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{source} has bytes that are not valid {encoding} on line {line}; "
            f"pass the file's encoding with --encoding (for example --encoding latin-1)."
        ) from None


def read_csv_text(text: str, source: str) -> pd.DataFrame:
    """Parse CSV text with every cell as a string ("NA" and "None" stay strings)."""
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{source} is empty.") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{source} is not a valid CSV file: {str(exc).strip()}.") from None


def require_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        present = ", ".join(map(repr, frame.columns)) or "none"
        header = str(frame.columns[0]) if len(frame.columns) == 1 else ""
        other = next((sep for sep in (";", "\t", "|") if sep in header), None)
        hint = (
            f"the header looks separated by {other!r}, not commas: save the file as comma-separated CSV"
            if other is not None
            else "set --text-column/--label-column to match"
        )
        raise DataError(
            f"{source} has no column {', '.join(repr(m) for m in missing)} (columns present: {present}); {hint}."
        )


def label_columns_of(cfg: DataSection) -> list[str]:
    """The columns that hold the labels: the 0/1 columns of a multi-label file, or the one label column."""
    return list(cfg.label_columns) if cfg.label_columns else [cfg.label_column]


def check_regular_file(path: Path, what: str) -> None:
    """Refuse a directory, device or pipe before reading it (``/dev/zero`` would be read until memory runs out)."""
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file; pass a CSV file.")
    if path.exists() and not path.is_file():
        raise DataError(f"{what} {path} is not a regular file (a device or pipe); pass a CSV file.")


def read_labelled_csv(path: Path, cfg: DataSection, *, require_label: bool = True) -> pd.DataFrame:
    """Read a CSV, check its columns, and return it with string cells."""
    check_regular_file(Path(path), "Data file")
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"Data file {path} does not exist.") from None
    except OSError as exc:
        raise DataError(f"Data file {path} cannot be read: {exc.strerror}.") from None
    text = decode_bytes(raw, cfg.encoding, f"Data file {path}")
    frame = read_csv_text(text, f"Data file {path}")
    columns = [cfg.text_column] + (label_columns_of(cfg) if require_label else [])
    require_columns(frame, columns, f"Data file {path}")
    starts = record_start_lines(text)
    if len(starts) == len(frame):  # else (a parser difference) with_source_rows counts records instead
        frame.attrs[LINE_STARTS] = starts
    return frame


def record_start_lines(text: str) -> list[int]:
    """The physical line on which each data record starts (the header is line 1): a quoted cell may span lines,
    so the n-th record is not always on line n + 1. Blank lines hold no record."""
    reader = csv.reader(io.StringIO(text))
    starts, previous_end = [], 0
    try:
        for row in reader:
            if row:
                starts.append(previous_end + 1)
            previous_end = reader.line_num
    except csv.Error:
        return []
    return starts[1:]


@dataclass
class DataReport:
    """What the checks found; warnings are logged and shown, never silent."""

    rows: int = 0
    dropped_rows: list[int] = field(default_factory=list)
    duplicate_rows: int = 0
    excluded_rows: int = 0  # left out as data.exclude_rows asked
    class_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _conflicting_texts(frame: pd.DataFrame, cfg: DataSection, labels: pd.Series) -> pd.Series:
    labels_per_text = labels.groupby(frame[cfg.text_column]).nunique()
    return labels_per_text[labels_per_text > 1]


def resolve_conflicting_labels(
    frame: pd.DataFrame, cfg: DataSection, source: str, report: DataReport, task: Task
) -> pd.DataFrame:
    """Texts that appear with different labels (label sets): an error naming the CSV lines, or, by
    ``data.on_conflicting_labels``, their rows dropped or merged by the task (the majority label, the union)."""
    policy = cfg.on_conflicting_labels
    if policy in MERGE_POLICIES and policy != task.merge_policy:  # refused whether or not this file has conflicts
        raise DataError(
            f"--on-conflicting-labels {policy} does not apply to {task.title} data; use drop or {task.merge_policy}."
        )
    labels = task.label_keys(frame, cfg)
    conflicts = _conflicting_texts(frame, cfg, labels)
    if not len(conflicts):
        return frame
    conflicted = frame[cfg.text_column].isin(conflicts.index)
    lines = csv_lines(frame, np.flatnonzero(conflicted.to_numpy()))
    which = f"{task.label_noun}s"
    found = f"{len(conflicts)} text(s) that appear with different {which} (e.g. {str(conflicts.index[0])[:60]!r})"
    if policy == "error":
        raise DataError(
            f"{source} has {found} on CSV lines {row_list(lines)}; give each text one {task.label_noun}, or set "
            f"--on-conflicting-labels drop or {task.merge_policy}."
        )
    if policy == "drop":
        report.warnings.append(f"Dropped {len(lines)} row(s) of {found} (CSV lines {row_list(lines)}).")
        return frame[~conflicted].reset_index(drop=True)
    merged = task.merge_conflicts(frame, cfg, conflicted, source)
    changed = int((task.label_keys(merged, cfg) != labels).sum())
    report.warnings.append(f"Gave {changed} row(s) of {found} {MERGE_POLICIES[policy]}.")
    return merged


def drop_bad_rows(frame: pd.DataFrame, cfg: DataSection, source: str, report: DataReport, task: Task):
    """Rows with empty text (or empty single label): an error, or dropped with a warning (``on_bad_rows: drop``)."""
    blank = task.blank_rows(frame, cfg)
    bad = csv_lines(frame, np.flatnonzero(blank.to_numpy()))
    if not bad:
        return frame
    what = task.blank_description
    if cfg.on_bad_rows == "error":
        raise DataError(
            f"{source} has {len(bad)} row(s) with {what} (CSV lines {row_list(bad)}); "
            "fix them or set data.on_bad_rows: drop."
        )
    report.dropped_rows = bad
    report.warnings.append(f"Dropped {len(bad)} row(s) with {what} (CSV lines {row_list(bad)}).")
    return frame[~blank].reset_index(drop=True)


def check_labelled(
    frame: pd.DataFrame,
    cfg: DataSection,
    source: str,
    task: Task,
    min_per_class: int = 3,
    *,
    require_several: bool = False,
) -> tuple[pd.DataFrame, DataReport]:
    """Run every data check; returns the frame to use (bad rows dropped only if ``on_bad_rows: drop``). The task
    checks its labels (per label for multi-label data, where ``require_several`` refuses a one-column file in
    which no text has several labels)."""
    report = DataReport(rows=len(frame))
    task.check_cells(frame, cfg, source)
    frame = drop_bad_rows(frame, cfg, source, report, task)
    if require_several:
        task.check_several(frame, cfg, source)
    frame = resolve_conflicting_labels(frame, cfg, source, report, task)
    labels = task.label_keys(frame, cfg)
    report.duplicate_rows = int(pd.DataFrame({"t": frame[cfg.text_column], "l": labels}).duplicated().sum())
    if report.duplicate_rows:
        report.warnings.append(
            f"{report.duplicate_rows} exact duplicate row(s) found; they are kept and always share a split."
        )
    report.class_counts = task.check_labels(frame, cfg, source, min_per_class)
    for warning in report.warnings:
        logger.warning(warning)
    return frame, report


@dataclass
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def write_splits(splits: Splits, output_root: str | Path) -> dict[str, Path]:
    """``<output_root>/data/{train,val,test}.csv``: the rows a model was trained, validated and tested on."""
    layout = RunLayout(Path(output_root))
    paths = {name: write_csv_atomic(layout.split_file(name), part) for name, part in splits.items()}
    logger.info("Wrote the splits to %s", layout.data_dir)
    return paths


ROUND_COLUMN = "round"  # the labelling round a row came from (bertcls suggest's loop; optional)


def note_rounds(frame: pd.DataFrame, source: str) -> None:
    """Say how many rows came from each labelling round when the data has a ``round`` column."""
    if ROUND_COLUMN not in frame.columns:
        return
    cells = frame[ROUND_COLUMN].astype(str).str.strip().replace("", "(none)")
    counts = cells.value_counts()
    order = sorted(counts.index, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r))
    logger.info("Rows of %s by labelling round: %s", source, ", ".join(f"{r}: {counts[r]}" for r in order))


def with_source_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Add each row's CSV line number in its file (the header is line 1), kept through splits and into
    ``data/*.csv``, so that findings such as label issues point at the user's own file."""
    if SOURCE_ROW in frame.columns:
        return frame
    starts = frame.attrs.get(LINE_STARTS)
    lines = np.asarray(starts) if starts is not None and len(starts) == len(frame) else np.arange(2, len(frame) + 2)
    return frame.assign(**{SOURCE_ROW: lines})


def read_row_list(path: Path, split: str | None = None) -> set[int]:
    """The CSV line numbers named in a file with a ``source_row`` column (label_issues.csv has one); with
    ``split``, only its rows whose ``split`` column names that split (line numbers of explicit split files are
    per file)."""
    frame = read_csv_text(decode_bytes(Path(path).read_bytes(), "utf-8", f"File {path}"), f"File {path}")
    if SOURCE_ROW not in frame.columns:
        raise DataError(f"{path} has no {SOURCE_ROW} column; --exclude-rows takes a CSV such as label_issues.csv.")
    if split is not None and "split" in frame.columns:
        frame = frame[frame["split"] == split]
    rows = pd.to_numeric(frame[SOURCE_ROW], errors="coerce")
    bad = rows.isna() | ~np.isfinite(rows) | (rows < 2) | (rows > MAX_LINE) | (rows != rows.round())
    if bad.any():
        value = frame[SOURCE_ROW][bad].iloc[0]
        raise DataError(
            f"{path} has {SOURCE_ROW} value {value!r}, which is not a CSV line number (a whole number from 2)."
        )
    return set(rows.astype(np.int64))


def exclude_rows(
    frame: pd.DataFrame, cfg: DataSection, output_root: str | Path, source: str, split: str | None = None
) -> pd.DataFrame:
    """Leave out the rows ``data.exclude_rows`` names (by CSV line number), and say how many."""
    if not cfg.exclude_rows:
        return frame
    path = resolve_data_path(cfg.exclude_rows, output_root)
    check_regular_file(path, "The exclude-rows file")
    if not path.is_file():
        raise DataError(f"The exclude-rows file {path} does not exist.")
    wanted = read_row_list(path, split)
    lines = pd.to_numeric(frame[SOURCE_ROW], errors="coerce")
    unknown = wanted - set(lines.dropna().astype(int))
    if unknown:
        raise DataError(
            f"{path} names {len(unknown)} line(s) that {source} does not have (e.g. {min(unknown)}); "
            "was it made from another data file?"
        )
    kept = frame[~lines.isin(wanted)].reset_index(drop=True)
    logger.warning("Left out %d row(s) of %s named in %s.", len(frame) - len(kept), source, path)
    return kept


def load_splits(cfg: DataSection, output_root: str | Path, seed: int, task: Task) -> tuple[Splits, DataReport]:
    """Explicit train/val/test files skip the split; otherwise split ``data_file`` as the task splits (nothing is
    written here)."""
    if cfg.train_file:
        parts = {}
        report, excluded = DataReport(), 0
        for name, path in zip(SPLIT_NAMES, (cfg.train_file, cfg.val_file, cfg.test_file), strict=True):
            if path is None:  # the settings refuse a train file without the other two
                raise DataError(f"No {name} file given; pass --train-file, --val-file and --test-file together.")
            resolved = resolve_data_path(path, output_root)
            raw = with_source_rows(read_labelled_csv(resolved, cfg))
            if name in ("train", "val"):  # label issues come from the cross-validated train and val rows
                read = len(raw)
                raw = exclude_rows(raw, cfg, output_root, str(resolved), split=name)
                excluded += read - len(raw)
            minimum = 1 if name == "train" else task.min_per_label_in_eval_files
            frame, part_report = check_labelled(
                raw, cfg, f"Data file {resolved}", task, minimum, require_several=name == "train"
            )
            parts[name] = frame
            report.rows += part_report.rows
            report.warnings += part_report.warnings
            if name == "train":
                report.class_counts = part_report.class_counts
        report.excluded_rows = excluded
        return Splits(**parts), report
    if not cfg.data_file:
        raise DataError("No data file given; pass --data-file or set data.data_file in the config.")
    resolved = resolve_data_path(cfg.data_file, output_root)
    raw = with_source_rows(read_labelled_csv(resolved, cfg))
    note_rounds(raw, str(resolved))
    read = len(raw)
    raw = exclude_rows(raw, cfg, output_root, str(resolved))
    frame, report = check_labelled(raw, cfg, f"Data file {resolved}", task, 3, require_several=True)
    report.excluded_rows = read - len(raw)
    splits = Splits(**task.split(frame, cfg, seed))
    logger.info("Split %s", ", ".join(f"{k}={len(v)}" for k, v in splits.items()))
    return splits, report
