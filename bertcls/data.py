"""Reading, checking and splitting labelled CSV data. Nothing is dropped silently."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bertcls.config import DataSection
from bertcls.errors import DataError
from bertcls.fileio import write_csv_atomic
from bertcls.labelsets import (
    check_flag_columns,
    check_label_counts,
    check_separator_used,
    label_series,
    label_sets,
    split_multilabel,
)
from bertcls.layout import SPLIT_NAMES, RunLayout

logger = logging.getLogger(__name__)
MAX_ROWS_LISTED = 10
SOURCE_ROW = "source_row"  # a row's CSV line number in the file it came from


def resolve_data_path(path: str, output_root: str | Path) -> Path:
    """A relative path resolves against the working directory first, then ``<output_root>/data/``."""
    candidate = Path(path)
    if candidate.exists():
        return candidate
    if candidate.is_absolute():
        raise DataError(f"Data file {path} does not exist.")
    under_root = RunLayout(output_root).data_dir / candidate
    if under_root.exists():
        return under_root
    raise DataError(f"Data file {path} was not found (looked in the working directory and {under_root.parent}).")


def _row_list(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:MAX_ROWS_LISTED])
    return shown + (f" and {len(rows) - MAX_ROWS_LISTED} more" if len(rows) > MAX_ROWS_LISTED else "")


BINARY_SIGNATURES = {
    b"PK\x03\x04": "a zip archive (an .xlsx or .docx file?)",
    b"\xd0\xcf\x11\xe0": "an old Office document (an .xls file?)",
    b"%PDF": "a PDF",
    b"\x1f\x8b": "a gzip archive",
    b"SQLite format 3": "an SQLite database",
}


def binary_kind(raw: bytes) -> str | None:
    """What a file that is not text is, from its first bytes (None for text)."""
    for signature, kind in BINARY_SIGNATURES.items():
        if raw.startswith(signature):
            return kind
    head = raw[:4096]
    if head.count(b"\x00") > len(head) // 10 and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "a binary file"
    return None


def decode_bytes(raw: bytes, encoding: str, source: str) -> str:
    """Decode a file's bytes, naming the line of the first bad byte and the ``--encoding`` option. A file that is
    not text at all (a spreadsheet, an archive) is named as such instead of being decoded as latin-1 noise; NUL
    bytes in a text file are removed with a warning."""
    wide = any(width in encoding.replace("-", "").replace("_", "") for width in ("16", "32"))
    kind = None if wide else binary_kind(raw)  # UTF-16/32 text is full of NUL bytes
    if kind is not None:
        raise DataError(f"{source} is not a text CSV file: it looks like {kind}; export it as CSV first.")
    if b"\x00" in raw and not raw.startswith((b"\xff\xfe", b"\xfe\xff")) and not wide:
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
        present = ", ".join(frame.columns) or "none"
        raise DataError(
            f"{source} has no column {', '.join(repr(m) for m in missing)} (columns present: {present}); "
            "set --text-column/--label-column to match."
        )


def label_columns_of(cfg: DataSection) -> list[str]:
    """The columns that hold the labels: the 0/1 columns of a multi-label file, or the one label column."""
    return list(cfg.label_columns) if cfg.label_columns else [cfg.label_column]


def read_labelled_csv(path: Path, cfg: DataSection, require_label: bool = True) -> pd.DataFrame:
    """Read a CSV, check its columns, and return it with string cells."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"Data file {path} does not exist.") from None
    except OSError as exc:
        raise DataError(f"Data file {path} cannot be read: {exc.strerror}.") from None
    frame = read_csv_text(decode_bytes(raw, cfg.encoding, f"Data file {path}"), f"Data file {path}")
    columns = [cfg.text_column] + (label_columns_of(cfg) if require_label else [])
    require_columns(frame, columns, f"Data file {path}")
    return frame


@dataclass
class DataReport:
    """What the checks found; warnings are logged and shown, never silent."""

    rows: int = 0
    dropped_rows: list[int] = field(default_factory=list)
    duplicate_rows: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _blank_rows(frame: pd.DataFrame, cfg: DataSection, multilabel: bool = False) -> pd.Series:
    """Rows with empty text, or empty label (single-label only: an empty multi-label cell means no label)."""
    blank = frame[cfg.text_column].str.strip() == ""
    return blank if multilabel else blank | (frame[cfg.label_column].str.strip() == "")


def _csv_lines(frame: pd.DataFrame, positions: np.ndarray) -> list[int]:
    """CSV line numbers of the rows at ``positions`` (the ``source_row`` column where present)."""
    if SOURCE_ROW in frame.columns:
        lines = pd.to_numeric(frame[SOURCE_ROW], errors="coerce").to_numpy()[positions]
        return [int(r) if r == r else int(i) + 2 for r, i in zip(lines, positions, strict=True)]
    return [int(i) + 2 for i in positions]


def _bad_rows(frame: pd.DataFrame, cfg: DataSection, multilabel: bool = False) -> list[int]:
    """CSV line numbers of rows with empty text or label."""
    return _csv_lines(frame, np.flatnonzero(_blank_rows(frame, cfg, multilabel).to_numpy()))


def _conflicting_texts(frame: pd.DataFrame, cfg: DataSection, labels: pd.Series) -> pd.Series:
    labels_per_text = labels.groupby(frame[cfg.text_column]).nunique()
    return labels_per_text[labels_per_text > 1]


def _majority_labels(frame: pd.DataFrame, cfg: DataSection, conflicted: pd.Series, source: str) -> pd.Series:
    """Each conflicting text's most frequent label (single-label); a tie is an error naming the lines."""
    winners = {}
    for text, group in frame[conflicted].groupby(cfg.text_column, sort=False):
        counts = group[cfg.label_column].value_counts()
        if len(counts) > 1 and counts.iloc[0] == counts.iloc[1]:
            lines = _csv_lines(frame, np.flatnonzero((frame[cfg.text_column] == text).to_numpy()))
            raise DataError(
                f"{source}: text {str(text)[:60]!r} has no majority label (CSV lines {_row_list(lines)}); "
                "fix those rows or set --on-conflicting-labels drop."
            )
        winners[text] = counts.index[0]
    return frame.loc[conflicted, cfg.text_column].map(winners)


def _label_set_unions(frame: pd.DataFrame, cfg: DataSection, conflicted: pd.Series) -> pd.DataFrame:
    """Every row of a conflicting text given the union of that text's label sets (multi-label, either form)."""
    sets = pd.Series(label_sets(frame, cfg), index=frame.index)
    unions = (
        sets[conflicted]
        .groupby(frame.loc[conflicted, cfg.text_column])
        .agg(lambda parts: tuple(sorted(set().union(*parts))))
    )
    merged = frame.loc[conflicted, cfg.text_column].map(unions)
    frame = frame.copy()
    if cfg.label_columns:
        for column in cfg.label_columns:
            frame.loc[conflicted, column] = merged.map(lambda labels, c=column: "1" if c in labels else "0")
    else:
        frame.loc[conflicted, cfg.label_column] = merged.map(cfg.label_separator.join)
    return frame


def resolve_conflicting_labels(
    frame: pd.DataFrame, cfg: DataSection, source: str, report: DataReport, multilabel: bool
) -> pd.DataFrame:
    """Texts that appear with different labels (label sets): an error naming the CSV lines, or, by
    ``data.on_conflicting_labels``, their rows dropped, relabelled to the majority label, or given the union."""
    policy = cfg.on_conflicting_labels
    if policy == ("majority" if multilabel else "union"):  # refused whether or not this file has conflicts
        task = "multi-label" if multilabel else "single-label"
        raise DataError(
            f"--on-conflicting-labels {policy} does not apply to {task} data; use drop or "
            f"{'union' if multilabel else 'majority'}."
        )
    labels = label_series(frame, cfg, multilabel)
    conflicts = _conflicting_texts(frame, cfg, labels)
    if not len(conflicts):
        return frame
    conflicted = frame[cfg.text_column].isin(conflicts.index)
    lines = _csv_lines(frame, np.flatnonzero(conflicted.to_numpy()))
    which = "label sets" if multilabel else "labels"
    found = f"{len(conflicts)} text(s) that appear with different {which} (e.g. {str(conflicts.index[0])[:60]!r})"
    if policy == "error":
        other = "union" if multilabel else "majority"
        raise DataError(
            f"{source} has {found} on CSV lines {_row_list(lines)}; give each text one "
            f"{'label set' if multilabel else 'label'}, or set --on-conflicting-labels drop or {other}."
        )
    if policy == "drop":
        report.warnings.append(f"Dropped {len(lines)} row(s) of {found} (CSV lines {_row_list(lines)}).")
        return frame[~conflicted].reset_index(drop=True)
    if policy == "majority":
        majority = _majority_labels(frame, cfg, conflicted, source)
        changed = int((frame.loc[conflicted, cfg.label_column] != majority).sum())
        frame = frame.copy()
        frame.loc[conflicted, cfg.label_column] = majority
        report.warnings.append(f"Gave {changed} row(s) of {found} their text's majority label.")
        return frame
    merged = _label_set_unions(frame, cfg, conflicted)
    changed = int((label_series(merged, cfg, multilabel) != labels).sum())
    report.warnings.append(f"Gave {changed} row(s) of {found} the union of their text's label sets.")
    return merged


def drop_bad_rows(frame: pd.DataFrame, cfg: DataSection, source: str, report: DataReport, multilabel: bool):
    """Rows with empty text (or empty single label): an error, or dropped with a warning (``on_bad_rows: drop``)."""
    bad = _bad_rows(frame, cfg, multilabel)
    if not bad:
        return frame
    what = "empty text" if multilabel else "empty text or label"
    if cfg.on_bad_rows == "error":
        raise DataError(
            f"{source} has {len(bad)} row(s) with {what} (CSV lines {_row_list(bad)}); "
            "fix them or set data.on_bad_rows: drop."
        )
    report.dropped_rows = bad
    report.warnings.append(f"Dropped {len(bad)} row(s) with {what} (CSV lines {_row_list(bad)}).")
    return frame[~_blank_rows(frame, cfg, multilabel)].reset_index(drop=True)


def check_labelled(
    frame: pd.DataFrame,
    cfg: DataSection,
    source: str,
    min_per_class: int = 3,
    multilabel: bool = False,
    require_separator: bool = False,
) -> tuple[pd.DataFrame, DataReport]:
    """Run every data check; returns the frame to use (bad rows dropped only if ``on_bad_rows: drop``). For
    multi-label data the checks apply per label, and ``require_separator`` refuses a one-column file in which no
    text has several labels."""
    report = DataReport(rows=len(frame))
    if multilabel:
        check_flag_columns(frame, cfg, source)
    frame = drop_bad_rows(frame, cfg, source, report, multilabel)
    if multilabel and require_separator:
        check_separator_used(frame, cfg, source)
    frame = resolve_conflicting_labels(frame, cfg, source, report, multilabel)
    labels = label_series(frame, cfg, multilabel)
    report.duplicate_rows = int(pd.DataFrame({"t": frame[cfg.text_column], "l": labels}).duplicated().sum())
    if report.duplicate_rows:
        report.warnings.append(
            f"{report.duplicate_rows} exact duplicate row(s) found; they are kept and always share a split."
        )
    if multilabel:
        report.class_counts = check_label_counts(frame, cfg, source, min_per_class)
    else:
        report.class_counts = check_class_counts(frame, cfg, source, min_per_class)
    for warning in report.warnings:
        logger.warning(warning)
    return frame, report


def check_class_counts(frame: pd.DataFrame, cfg: DataSection, source: str, min_per_class: int) -> dict[str, int]:
    counts = frame[cfg.label_column].value_counts()
    if len(counts) < 2:
        raise DataError(f"{source} has {len(counts)} class(es); a classifier needs at least 2.")
    unique_per_class = frame.drop_duplicates(subset=[cfg.text_column])[cfg.label_column].value_counts()
    small = unique_per_class[unique_per_class < min_per_class]
    if len(small):
        listed = ", ".join(f"{k!r} ({v})" for k, v in small.items())
        raise DataError(
            f"{source}: class(es) {listed} have fewer than {min_per_class} distinct texts, too few to split; "
            "add examples or remove the class."
        )
    return {str(k): int(v) for k, v in counts.items()}


@dataclass
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Rows of one class for val and test: rounded shares, at least one each, at least one left to train."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    while n_test + n_val > n - 1 and (n_test > 1 or n_val > 1):
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def split_by_text(frame: pd.DataFrame, cfg: DataSection, seed: int) -> Splits:
    """Stratified train/val/test split in which identical texts always land in the same split.

    Distinct texts are shuffled per class with the seed and cut by the val/test fractions; every row of a text
    follows that text.
    """
    rng = np.random.default_rng(seed)
    unique = frame.drop_duplicates(subset=[cfg.text_column])
    assignment: dict[str, str] = {}
    for _, group in sorted(unique.groupby(cfg.label_column), key=lambda item: str(item[0])):
        texts = group[cfg.text_column].to_numpy()[rng.permutation(len(group))]
        n_val, n_test = _split_counts(len(texts), cfg.val_fraction, cfg.test_fraction)
        assignment.update({t: "test" for t in texts[:n_test]})
        assignment.update({t: "val" for t in texts[n_test : n_test + n_val]})
        assignment.update({t: "train" for t in texts[n_test + n_val :]})
    where = frame[cfg.text_column].map(assignment)
    parts = {name: frame[where == name].reset_index(drop=True) for name in SPLIT_NAMES}
    return Splits(**parts)


def write_splits(splits: Splits, output_root: str | Path) -> dict[str, Path]:
    """``<output_root>/data/{train,val,test}.csv``: the rows a model was trained, validated and tested on."""
    layout = RunLayout(output_root)
    paths = {name: write_csv_atomic(layout.split_file(name), part) for name, part in splits.items()}
    logger.info("Wrote the splits to %s", layout.data_dir)
    return paths


def with_source_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Add each row's CSV line number in its file (the header is line 1), kept through splits and into
    ``data/*.csv``, so that findings such as label issues point at the user's own file."""
    if SOURCE_ROW in frame.columns:
        return frame
    return frame.assign(**{SOURCE_ROW: np.arange(2, len(frame) + 2)})


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
    if rows.isna().any() or (rows < 2).any():
        raise DataError(f"{path} has {SOURCE_ROW} values that are not CSV line numbers (whole numbers from 2).")
    return set(rows.astype(int))


def exclude_rows(
    frame: pd.DataFrame, cfg: DataSection, output_root: str | Path, source: str, split: str | None = None
) -> pd.DataFrame:
    """Leave out the rows ``data.exclude_rows`` names (by CSV line number), and say how many."""
    if not cfg.exclude_rows:
        return frame
    path = resolve_data_path(cfg.exclude_rows, output_root)
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


def load_splits(
    cfg: DataSection, output_root: str | Path, seed: int, multilabel: bool = False
) -> tuple[Splits, DataReport]:
    """Explicit train/val/test files skip the split; otherwise split ``data_file`` (nothing is written here).
    Multi-label data is split by iterative stratification."""
    if cfg.train_file:
        parts = {}
        report = DataReport()
        for name, path in zip(SPLIT_NAMES, (cfg.train_file, cfg.val_file, cfg.test_file), strict=True):
            resolved = resolve_data_path(path, output_root)
            raw = with_source_rows(read_labelled_csv(resolved, cfg))
            if name in ("train", "val"):  # label issues come from the cross-validated train and val rows
                raw = exclude_rows(raw, cfg, output_root, str(resolved), split=name)
            frame, part_report = check_labelled(
                raw,
                cfg,
                f"Data file {resolved}",
                1 if not multilabel or name == "train" else 0,
                multilabel,
                require_separator=name == "train",
            )
            parts[name] = frame
            report.rows += part_report.rows
            report.warnings += part_report.warnings
            if name == "train":
                report.class_counts = part_report.class_counts
        return Splits(**parts), report
    if not cfg.data_file:
        raise DataError("No data file given; pass --data-file or set data.data_file in the config.")
    resolved = resolve_data_path(cfg.data_file, output_root)
    raw = with_source_rows(read_labelled_csv(resolved, cfg))
    raw = exclude_rows(raw, cfg, output_root, str(resolved))
    frame, report = check_labelled(raw, cfg, f"Data file {resolved}", 3, multilabel, require_separator=True)
    splits = Splits(**split_multilabel(frame, cfg, seed)) if multilabel else split_by_text(frame, cfg, seed)
    logger.info("Split %s", ", ".join(f"{k}={len(v)}" for k, v in splits.items()))
    return splits, report
