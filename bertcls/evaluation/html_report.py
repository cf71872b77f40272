"""One self-contained HTML page (no network): headline numbers, the key plots, then tables, long ones collapsed.
Every plot is embedded as base64 PNG; numbers are formatted by kind (counts as integers, rates to 4 decimals, empty
cells blank)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.notes { color: #555; font-size: 0.9em; margin: 0.2em 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f4f6f8; } td.text { text-align: left; max-width: 560px; }
td:first-child, th:first-child { text-align: left; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: 0.85em; }
.cards { display: flex; gap: 0.8em; flex-wrap: wrap; margin: 1em 0; }
.card { background: #f4f6f8; border-radius: 6px; padding: 0.5em 0.9em; min-width: 8em; }
.card b { display: block; font-size: 1.35em; } .card span { color: #555; font-size: 0.85em; }
details { margin: 0.4em 0 1em; } summary { cursor: pointer; color: #0b5cad; }
.flag { color: #b00020; font-weight: 600; }
"""
COLLAPSE_ROWS = 12


@dataclass
class Section:
    """A heading and a table (or a paragraph); tables longer than ``COLLAPSE_ROWS`` rows start collapsed."""

    heading: str
    table: pd.DataFrame | None = None
    text: str = ""
    text_columns: list[str] = field(default_factory=list)
    block: str = ""  # HTML shown as it is after the text (built by the caller from escaped pieces)


def format_cell(value, *, column_is_int: bool) -> str:
    """Integers without decimals, other numbers to 4 decimals, missing values blank, everything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)) or (column_is_int and isinstance(value, (float, np.floating))):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return str(value)


def _is_int_column(series: pd.Series) -> bool:
    """A column of counts: integers, or whole numbers stored as floats with some above 1 (rates never are)."""
    if series.dtype.kind in "iu":
        return True
    values = pd.to_numeric(series, errors="coerce").dropna()
    return bool(len(values) and (values == values.round()).all() and (values.abs() > 1).any())


def table_html(frame: pd.DataFrame, text_columns: Sequence[str] = ()) -> str:
    ints = {c: _is_int_column(frame[c]) for c in frame.columns}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            css = ' class="text"' if column in text_columns else ""
            cells.append(f"<td{css}>{html.escape(format_cell(value, column_is_int=ints[column]))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def figure_html(path: Path, caption: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(caption or path.stem.replace("_", " "))
    return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def section_html(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.heading)}</h2>"]
    if section.text:
        parts.append(f"<p>{section.text}</p>")  # built by the caller from escaped pieces
    parts.append(section.block)
    if section.table is not None:
        body = table_html(section.table, section.text_columns)
        if len(section.table) > COLLAPSE_ROWS:
            body = f"<details><summary>Show all {len(section.table):,} rows</summary>{body}</details>"
        parts.append(body)
    return "".join(parts)


def build_report(
    title: str,
    headline: dict[str, str],
    notes: list[str],
    key_plots: list[Path],
    sections: list[Section],
    other_plots: list[Path],
) -> str:
    """Headline cards, notes, the key plots, the sections, then every other plot."""
    cards = "".join(
        f'<div class="card"><span>{html.escape(k)}</span><b>{html.escape(v)}</b></div>' for k, v in headline.items()
    )
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f'<div class="cards">{cards}</div>',
        "".join(f'<p class="notes">{html.escape(n)}</p>' for n in notes),
        '<div class="plots">' + "".join(figure_html(p) for p in key_plots) + "</div>",
    ]
    parts += [section_html(s) for s in sections]
    if other_plots:
        parts.append("<h2>More plots</h2><div class='plots'>" + "".join(figure_html(p) for p in other_plots) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
