"""Cells a spreadsheet would run as formulas (``=``, ``+``, ``-``, ``@``, tab, carriage return at the start) are
neutralised with a leading apostrophe in every table bertcls writes for people to open: prediction files and
evaluation results, headers included. Numbers are never altered; files bertcls reads back (the splits under
``data/``) keep the user's text as it was."""

from __future__ import annotations

import re

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def escape_formula(cell: object) -> object:
    """A text cell a spreadsheet would run as a formula, with a leading apostrophe; anything else as it is."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START) and not _NUMBER.match(cell.strip()):
        return "'" + cell
    return cell


def escape_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every text cell and every column name escaped (label-derived headers such as ``prob_<label>``
    included)."""
    escaped = frame.copy()
    for position in range(escaped.shape[1]):
        column = escaped.iloc[:, position]
        if _holds_text(column.dtype):
            escaped.iloc[:, position] = column.map(escape_formula)
    escaped.columns = [escape_formula(str(c)) for c in escaped.columns]
    if _holds_text(escaped.index.dtype):
        escaped.index = escaped.index.map(escape_formula)
    return escaped


def _holds_text(dtype: object) -> bool:
    return pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
