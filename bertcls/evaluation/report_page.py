"""The evaluation's report.html: what a person reads first (headline numbers, confusion matrix, reliability,
risk-coverage), then the tables."""

from __future__ import annotations

import html

import pandas as pd

from bertcls.evaluation.html_report import Section, build_report

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


def report_page(ckpt, data, summary, unseen, cv, folds, trust, outcome, writer) -> str:
    staging = writer.staging
    notes = [f"Checkpoint: {ckpt.path}", f"Rows evaluated: {len(data):,}"]
    if unseen:
        listed = ", ".join(f"{k} ({v})" for k, v in unseen.items())
        notes.append(f"Labels the model never saw (scored as errors): {listed}")
    sections = [
        Section("Classification report", pd.read_csv(staging / "sklearn_classification_report.csv")),
        Section("Confusion matrix", pd.read_csv(staging / "confusion_matrix.csv")),
        Section(
            "Calibration",
            trust.calibration,
            text="Expected calibration error and negative log-likelihood on these rows, with the softmax temperature "
            "fitted on the validation split (after) and without it (before).",
        ),
        Section("Reliability bins (calibrated)", trust.reliability["after calibration"]),
    ]
    curve = trust.risk_coverage
    best = trust.threshold
    target = html.escape(f"{trust.target:g}")
    text = (
        f"Abstaining below confidence {best.threshold:.3f} keeps {best.coverage:.1%} of rows at accuracy "
        f"{best.accuracy:.4f} (target {target}); use it with <code>predict --min-confidence</code>."
        if best is not None
        else f"No confidence threshold reaches the target accuracy {target} on these rows."
    )
    sections.append(Section("Risk against coverage", curve, text=text))
    if cv is not None:
        sections.append(Section(f"Cross-validation ({folds} folds)", cv))
    if outcome.label_issues is not None:
        issues = short_texts(outcome.label_issues, ["text"])
        sections.append(
            Section(
                "Likely label issues",
                issues.head(200),
                text=f"{len(issues):,} rows whose given label the out-of-fold predictions of the cross-validation "
                "find unlikely (confident learning), worst first; all of them in label_issues.csv. Nothing was "
                "changed: review them, then <code>train --exclude-rows label_issues.csv</code> leaves out the rows "
                "you keep in that file.",
                text_columns=["text"],
            )
        )
    if outcome.near_duplicates is not None:
        pairs = short_texts(outcome.near_duplicates, ["train_text", "test_text"])
        sections.append(
            Section(
                "Near-duplicates between training and test rows",
                pairs.head(200),
                text=f"{len(pairs):,} pairs at cosine similarity >= the threshold; pairs with different labels first.",
                text_columns=["train_text", "test_text"],
            )
        )
    errors = pd.read_csv(staging / "error_analysis.csv", dtype={"text": str}, keep_default_na=False)
    sections.append(Section("Most confident errors", short_texts(errors, ["text"]).head(50), text_columns=["text"]))
    sections.append(Section("Error metrics", pd.read_csv(staging / "error_metrics.csv")))
    key = [p for name in KEY_PLOTS for p in writer.plots if p.name == name]
    other = [p for p in writer.plots if p not in key]
    cards = headline(summary, trust, outcome)
    return build_report("bertcls evaluation", cards, notes, key, sections, other)
