"""How messages point at rows: CSV line numbers (the ``source_row`` column where a frame carries it)."""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_ROWS_LISTED = 10
SOURCE_ROW = "source_row"  # a row's CSV line number in the file it came from


def csv_lines(frame: pd.DataFrame, positions: np.ndarray) -> list[int]:
    """CSV line numbers of the rows at ``positions`` (the ``source_row`` column where present)."""
    if SOURCE_ROW in frame.columns:
        lines = pd.to_numeric(frame[SOURCE_ROW], errors="coerce").to_numpy(dtype=np.float64)[positions]
        return [int(r) if np.isfinite(r) else int(i) + 2 for r, i in zip(lines, positions, strict=True)]
    return [int(i) + 2 for i in positions]


def row_list(rows: list[int]) -> str:
    """Line numbers for a message: the first ten, then how many more."""
    shown = ", ".join(str(r) for r in rows[:MAX_ROWS_LISTED])
    return shown + (f" and {len(rows) - MAX_ROWS_LISTED} more" if len(rows) > MAX_ROWS_LISTED else "")
