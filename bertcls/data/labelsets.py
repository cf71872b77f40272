"""Multi-label data: label sets read from one separated column or from several 0/1 columns, their checks, and the
iterative stratification that splits them (Sechidis, Tsoumakas and Vlahavas, 2011).

Both input forms become the same thing: a 0/1 matrix with one column per label, labels sorted by name.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bertcls.config.settings import DataSection
from bertcls.runtime.errors import DataError

logger = logging.getLogger(__name__)
TRUE_VALUES, FALSE_VALUES = {"1", "1.0", "true"}, {"0", "0.0", "false", ""}


def label_sets(frame: pd.DataFrame, cfg: DataSection) -> list[tuple[str, ...]]:
    """Each row's labels, sorted: the names of its 1-columns (``label_columns``), or the non-empty parts of its label
    cell split on ``label_separator`` (an empty cell: no label)."""
    if cfg.label_columns:
        flags = frame[cfg.label_columns].apply(lambda col: col.str.strip().str.lower().isin(TRUE_VALUES))
        names = np.array(cfg.label_columns, dtype=object)
        return [tuple(sorted(names[row])) for row in flags.to_numpy()]
    sep = cfg.label_separator
    return [tuple(sorted({p.strip() for p in cell.split(sep) if p.strip()})) for cell in frame[cfg.label_column]]


def label_keys(frame: pd.DataFrame, cfg: DataSection) -> pd.Series:
    """One string per row naming its label set (labels joined by the separator, sorted), for comparing and showing."""
    return pd.Series([cfg.label_separator.join(s) for s in label_sets(frame, cfg)], index=frame.index, dtype=object)


def names_of(frame: pd.DataFrame, cfg: DataSection) -> list[str]:
    """The labels of a multi-label frame, sorted (the 0/1 columns count even where no row has them)."""
    if cfg.label_columns:
        return sorted(cfg.label_columns)
    return sorted({label for labels in label_sets(frame, cfg) for label in labels})


def label_matrix(frame: pd.DataFrame, cfg: DataSection, names: list[str]) -> np.ndarray:
    """The 0/1 float32 matrix (rows x ``names``); labels outside ``names`` are left out."""
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(frame), len(names)), dtype=np.float32)
    for row, labels in enumerate(label_sets(frame, cfg)):
        for label in labels:
            if label in index:
                matrix[row, index[label]] = 1.0
    return matrix


def unknown_labels(frame: pd.DataFrame, cfg: DataSection, names: list[str]) -> dict[str, int]:
    """Labels in ``frame`` that are not in ``names``, with how many rows carry each."""
    counts: dict[str, int] = {}
    for labels in label_sets(frame, cfg):
        for label in labels:
            if label not in names:
                counts[label] = counts.get(label, 0) + 1
    return counts


def check_flag_columns(frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
    """Every cell of a 0/1 label column is 0 or 1 (or empty, read as 0)."""
    for column in cfg.label_columns or []:
        values = frame[column].str.strip().str.lower()
        bad = ~values.isin(TRUE_VALUES | FALSE_VALUES)
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            line = int(frame["source_row"].iloc[position]) if "source_row" in frame.columns else position + 2
            raise DataError(
                f"{source}: label column {column!r} holds {frame[column].iloc[position]!r} on CSV line {line}; "
                "label columns take 0 or 1."
            )


def check_separator_used(frame: pd.DataFrame, cfg: DataSection, source: str) -> None:
    """A multi-label file in the one-column form where no cell holds the separator is most likely single-label data
    (or another separator)."""
    if cfg.label_columns or not len(frame):
        return
    if not frame[cfg.label_column].str.contains(cfg.label_separator, regex=False).any():
        raise DataError(
            f"{source}: no cell of label column {cfg.label_column!r} holds the separator {cfg.label_separator!r}, so "
            "no text has several labels; set --label-separator to the one the file uses, or drop --multi-label."
        )


def check_label_counts(frame: pd.DataFrame, cfg: DataSection, source: str, min_per_label: int) -> dict[str, int]:
    """Texts per label (distinct texts); at least 2 labels, each with ``min_per_label`` distinct texts."""
    distinct = frame.drop_duplicates(subset=[cfg.text_column])
    names = names_of(frame, cfg)
    counts = dict(zip(names, label_matrix(distinct, cfg, names).sum(axis=0).astype(int).tolist(), strict=True))
    if min_per_label and len(counts) < 2:
        raise DataError(f"{source} has {len(counts)} label(s); a multi-label classifier needs at least 2.")
    small = {k: v for k, v in counts.items() if v < min_per_label}
    if small:
        listed = ", ".join(f"{k!r} ({v})" for k, v in sorted(small.items()))
        raise DataError(
            f"{source}: label(s) {listed} have fewer than {min_per_label} texts, too few to split; "
            "add examples or remove the label."
        )
    return counts


def split_targets(count: int, fractions: list[float]) -> np.ndarray:
    """Texts of one label each part should get: rounded shares, at least one each for every part but the first when
    the label has enough texts, the first part (train) keeping the rest and at least one."""
    wanted = np.array([0] + [max(1, round(count * f)) if count >= len(fractions) else 0 for f in fractions[1:]])
    while wanted[1:].sum() > count - 1 and wanted[1:].max() > 0:
        wanted[1 + int(np.argmax(wanted[1:]))] -= 1
    wanted[0] = count - wanted[1:].sum()
    return wanted.astype(float)


def iterative_stratification(matrix: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """The part (index into ``fractions``) of each row. Rarest label first, each of its rows goes to the part that
    still wants most of that label (ties: the part that wants most rows, then chance); rows without labels fill the
    parts by size. A repair pass then gives every part at least one text of each label that has enough texts."""
    rng = np.random.default_rng(seed)
    rows, n_parts = len(matrix), len(fractions)
    positive = matrix > 0
    per_label = np.stack([split_targets(int(c), fractions) for c in positive.sum(axis=0)], axis=1)  # parts x labels
    per_part = np.array(fractions, dtype=float) * rows
    part = np.full(rows, -1)
    left = positive.copy()
    while left.any():
        label = int(np.argmin(np.where(left.any(axis=0), left.sum(axis=0), np.inf)))
        for row in rng.permutation(np.flatnonzero(left[:, label])):
            wants = per_label[:, label]
            best = np.flatnonzero(wants == wants.max())
            best = best[per_part[best] == per_part[best].max()]
            chosen = int(rng.choice(best))
            part[row] = chosen
            per_label[chosen] -= positive[row]
            per_part[chosen] -= 1
            left[row] = False
    for row in rng.permutation(np.flatnonzero(part < 0)):
        chosen = int(np.argmax(per_part))
        part[row], per_part[chosen] = chosen, per_part[chosen] - 1
    return repair_missing(part, positive, n_parts)


def repair_missing(part: np.ndarray, positive: np.ndarray, n_parts: int) -> np.ndarray:
    """Move single rows so that each label with at least ``n_parts`` texts appears in every part: from a part with
    two or more of its texts (most first), a row whose move leaves every other such label still present there.
    A label that cannot be repaired that way is named in a warning."""
    part = part.copy()
    guarded = positive.sum(axis=0) >= n_parts
    for label in np.flatnonzero(guarded):
        for target in range(n_parts):
            rows = np.flatnonzero(positive[:, label])
            if (part[rows] == target).any():
                continue
            if not move_one(part, positive, guarded, rows, target, n_parts):
                logger.warning("Label %d could not be given a text in every split; a split lacks it.", label)
    return part


def move_one(part, positive, guarded, rows, target, n_parts) -> bool:
    """Move one of ``rows`` into ``target`` without leaving its old part without a guarded label; True if done."""
    counts = np.bincount(part[rows], minlength=n_parts)
    for donor in np.argsort(-counts, kind="stable"):
        if counts[donor] < 2:
            return False
        for row in rows[part[rows] == donor]:
            others = np.flatnonzero(positive[row] & guarded)
            if (positive[part == donor][:, others].sum(axis=0) > 1).all():
                part[row] = target
                return True
    return False


def split_label_sets(frame: pd.DataFrame, cfg: DataSection, seed: int) -> dict[str, pd.DataFrame]:
    """train/val/test by iterative stratification over distinct texts; every row of a text follows that text."""
    groups = pd.factorize(frame[cfg.text_column])[0]
    fractions = [1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction]
    part = grouped_parts(label_matrix(frame, cfg, names_of(frame, cfg)), groups, fractions, seed)
    names = np.array(["train", "val", "test"])
    return {name: frame[names[part] == name].reset_index(drop=True) for name in names}


def grouped_parts(matrix: np.ndarray, groups: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """The part of each row: iterative stratification over groups (identical texts), one draw per group in the
    order of the group keys, every row following its group."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return iterative_stratification(matrix[first], fractions, seed)[inverse]


def fold_parts(matrix: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold (train, test) row indices for multi-label rows, stratified iteratively over groups of identical
    texts (a group's rows share its fold)."""
    part = grouped_parts(matrix, groups, [1.0 / folds] * folds, seed)
    rows = np.arange(len(groups))
    return [(rows[part != k], rows[part == k]) for k in range(folds)]
