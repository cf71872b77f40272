"""Pieces of report.html shared by the task reports: text previews and the single-label headline cards."""

from __future__ import annotations

import pandas as pd

from bertcls.evaluation.html_report import Section
from bertcls.explain.outputs import ErrorToExplain

KEY_PLOTS = ("confusion_matrix.png", "reliability_diagram.png", "risk_coverage.png")
TEXT_PREVIEW = 200


def short_texts(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in columns:
        frame[column] = frame[column].astype(str).str.slice(0, TEXT_PREVIEW)
    return frame


def headline(summary: dict, trust, outcome) -> dict[str, str]:
    calibration = trust.calibration.set_index("calibration")
    cards = {
        "accuracy": f"{summary['accuracy']:.4f}",
        "macro F1": f"{summary['macro_f1']:.4f}",
        "weighted F1": f"{summary['weighted_f1']:.4f}",
        "ECE (calibrated)": f"{calibration.loc['after', 'ece']:.4f}",
        "ECE before calibration": f"{calibration.loc['before', 'ece']:.4f}",
        "temperature": f"{calibration.loc['after', 'temperature']:.3f}",
    }
    best = trust.threshold
    if best is not None:
        cards["coverage at target accuracy"] = f"{best.coverage:.1%} (conf >= {best.threshold:.3f})"
    else:
        cards["coverage at target accuracy"] = "not reached"
    if outcome.label_issues is not None:
        cards["likely label issues"] = f"{len(outcome.label_issues):,}"
    if outcome.near_duplicates is not None:
        differing = int(outcome.near_duplicates.different_labels.sum())
        cards["near-duplicates train/test"] = f"{len(outcome.near_duplicates):,} ({differing:,} differ in label)"
    return cards


def explained_errors_section(errors: list[ErrorToExplain], meaning: str) -> Section:
    """The most confident errors with their words highlighted (see ``bertcls explain``)."""
    from bertcls.explain.page import STYLE, explanation_html, legend

    blocks = "".join(explanation_html(e.explanation, e.heading) for e in errors if e.explanation is not None)
    methods = {e.explanation.explanation.method for e in errors if e.explanation is not None}
    text = f"Why the model made its {len(errors)} most confident errors. {legend(meaning, methods)}"
    return Section("Most confident errors, explained", text=text, block=f"<style>{STYLE}</style>{blocks}")
