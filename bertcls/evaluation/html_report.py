"""One self-contained HTML page: summary, tables and every plot embedded as base64 PNG (no network)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f4f6f8; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: 0.85em; } .cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { background: #f4f6f8; border-radius: 6px; padding: 0.6em 1em; } .card b { display: block; font-size: 1.4em; }
"""


def _table(frame: pd.DataFrame, index: bool = False) -> str:
    return frame.to_html(index=index, float_format=lambda v: f"{v:.4f}", border=0, escape=True)


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def build_report(
    title: str,
    summary: dict[str, float],
    tables: dict[str, tuple[pd.DataFrame, bool]],
    plots: list[Path],
    notes: list[str],
) -> str:
    cards = "".join(f'<div class="card">{html.escape(k)}<b>{v:.4f}</b></div>' for k, v in summary.items())
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f'<div class="cards">{cards}</div>',
    ]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    for heading, (frame, index) in tables.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>{_table(frame, index)}")
    parts.append("<h2>Plots</h2>")
    parts += [_figure(path) for path in plots]
    parts.append("</body></html>")
    return "\n".join(parts)
