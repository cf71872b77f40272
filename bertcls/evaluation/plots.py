"""Evaluation plots (matplotlib Agg backend), sized to stay readable from 2 to 20 classes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from bertcls.runtime.fileio import atomic_path

DPI = 110


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it: every figure bertcls saves goes through here."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _side(n_labels: int) -> float:
    return max(4.5, min(16.0, 1.0 + 0.65 * n_labels))


def _heatmap(ax, data: pd.DataFrame, fmt: str, title: str, vmax: float | None = None) -> None:
    n = len(data.columns)
    sns.heatmap(
        data,
        annot=n <= 20,
        fmt=fmt,
        cmap="Blues",
        cbar=False,
        ax=ax,
        vmin=0,
        vmax=vmax,
        annot_kws={"size": 9 if n <= 10 else 7},
        linewidths=0.5,
        linecolor="white",
    )
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def confusion_matrix_plot(confusion: pd.DataFrame, path: Path) -> Path:
    """Counts and row-normalised rates side by side."""
    side = _side(len(confusion))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    totals = confusion.sum(axis=1).replace(0, 1)
    _heatmap(axes[0], confusion, "d", "Counts")
    _heatmap(axes[1], confusion.div(totals, axis=0), ".2f", "Row-normalised (recall)", vmax=1.0)
    fig.tight_layout()
    return save_figure(fig, path)


def report_heatmap(report: pd.DataFrame, path: Path) -> Path:
    """Per-class precision, recall and F1."""
    data = report.set_index("label")[["precision", "recall", "f1"]]
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.45 * len(data) + 1.5)))
    sns.heatmap(data, annot=True, fmt=".3f", cmap="RdYlGn", vmin=0, vmax=1, ax=ax, linewidths=0.5)
    ax.set_title("Classification report")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelrotation=0)
    fig.tight_layout()
    return save_figure(fig, path)


def confidence_plot(predictions: pd.DataFrame, path: Path) -> Path:
    correct = predictions.true_label == predictions.predicted_label
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 21).tolist()
    ax.hist(
        predictions.confidence[correct],
        bins=bins,
        alpha=0.7,
        label=f"correct ({int(correct.sum())})",
        color="tab:green",
    )
    ax.hist(
        predictions.confidence[~correct],
        bins=bins,
        alpha=0.7,
        label=f"errors ({int((~correct).sum())})",
        color="tab:red",
    )
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("rows")
    ax.set_title("Confidence of errors vs correct predictions")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_pairs_plot(pairs: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(pairs) + 1.2)))
    if pairs.empty:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center", fontsize=14)
        ax.axis("off")
    else:
        names = [f"{t} -> {p}" for t, p in zip(pairs.true_label, pairs.predicted_label, strict=True)]
        ax.barh(names[::-1], pairs["count"][::-1], color="tab:orange")
        ax.set_xlabel("errors")
        ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]  # an AutoLocator takes it
    ax.set_title("Most frequent confusions (true -> predicted)")
    fig.tight_layout()
    return save_figure(fig, path)


def length_plot(predictions: pd.DataFrame, path: Path) -> Path:
    correct = predictions.true_label == predictions.predicted_label
    lengths = predictions.text.str.split().str.len()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(1, int(np.percentile(lengths, 99))) if len(lengths) else 1
    bins = np.linspace(0, top, 25).tolist()
    for rows, label, colour in ((correct, "correct", "tab:green"), (~correct, "errors", "tab:red")):
        if rows.any():  # a density of no rows is 0/0
            ax.hist(lengths[rows].clip(upper=top), bins=bins, alpha=0.7, density=True, label=label, color=colour)
    ax.set_xlabel("text length (words)")
    ax.set_ylabel("density")
    ax.set_title("Text length of errors vs correct predictions")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def distinctive_words(wrong: list[str], right: list[str], stopwords: set[str], top: int = 60) -> dict[str, float]:
    """Words weighted by how much more often they occur in a class's misclassified texts than in its correctly
    classified ones (smoothed ratio of document frequencies), stop words and very short words removed."""
    from collections import Counter

    def doc_freq(texts: list[str]) -> Counter:
        counts: Counter = Counter()
        for text in texts:
            words = {w for w in re.findall(r"[a-z][a-z'-]+", text.lower()) if len(w) > 2 and w not in stopwords}
            counts.update(words)
        return counts

    in_wrong, in_right = doc_freq(wrong), doc_freq(right)
    scores = {
        word: ((n + 0.5) / (len(wrong) + 1)) / ((in_right.get(word, 0) + 0.5) / (len(right) + 1))
        for word, n in in_wrong.items()
        if n >= 2 or len(wrong) < 4
    }
    best = sorted(scores.items(), key=lambda item: -item[1])[:top]
    return {word: score for word, score in best if score > 1.0}


def wordcloud_plot(predictions: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """One word cloud per true class: the words that set its misclassified texts apart from its correct ones."""
    texts = {}
    for label in labels:
        own = predictions[predictions.true_label == label]
        texts[label] = (
            own[own.predicted_label != label].text.tolist(),
            own[own.predicted_label == label].text.tolist(),
        )
    return cloud_grid(texts, "Words over-represented in misclassified texts, by true class", path)


def cloud_grid(texts: dict[str, tuple[list[str], list[str]]], title: str, path: Path) -> Path:
    """A word cloud per key of ``texts`` (label -> (texts with an error, texts decided right)): the words that set
    the first group apart from the second."""
    from wordcloud import STOPWORDS, WordCloud

    labels = list(texts)
    cols = min(3, max(1, len(labels)))
    rows = max(1, math.ceil(len(labels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    stopwords = set(STOPWORDS) | {"said", "will", "also", "one", "two", "new", "year", "years", "says", "mr"}
    for ax, label in zip(axes.flat, labels, strict=False):
        wrong, right = texts[label]
        ax.axis("off")
        ax.set_title(f"{label} ({len(wrong)} error{'' if len(wrong) == 1 else 's'})", fontsize=11)
        weights = distinctive_words(wrong, right, stopwords)
        if not weights:
            message = "no errors" if not wrong else "no distinctive words"
            ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, color="gray", transform=ax.transAxes)
            continue
        cloud = WordCloud(width=420, height=300, background_color="white", random_state=0)
        ax.imshow(cloud.generate_from_frequencies(weights), interpolation="bilinear")
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def reliability_plot(frames: dict[str, pd.DataFrame], temperature: float, path: Path) -> Path:
    """Accuracy against mean confidence per bin, before and after calibration, with each bin's row count."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    ax, counts = axes
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
    colours = {"before calibration": "tab:red", "after calibration": "tab:blue"}
    for offset, (stage, frame) in enumerate(frames.items()):
        shown = frame.dropna(subset=["accuracy"])
        ax.plot(shown.mean_confidence, shown.accuracy, marker="o", color=colours.get(stage), label=stage)
        centres = np.arange(len(frame)) + offset * 0.4
        counts.bar(centres, frame.rows, width=0.4, color=colours.get(stage), label=stage)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"Reliability (temperature {temperature:.2f})")
    ax.legend(loc="upper left", fontsize=9)
    first = frames[next(iter(frames))]
    counts.set_xticks(np.arange(len(first)) + 0.2, first.bin, rotation=60, fontsize=8)
    counts.set_ylabel("rows")
    counts.set_title("Rows per confidence bin")
    counts.legend(fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def risk_coverage_plot(curve: pd.DataFrame, target: float, best, path: Path) -> Path:
    """Accuracy and macro F1 of the kept rows against coverage as the confidence threshold rises."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    ax.plot(curve.coverage, curve.accuracy, label="accuracy of kept rows", color="tab:blue")
    ax.plot(curve.coverage, curve.macro_f1, label="macro F1 of kept rows", color="tab:green")
    ax.axhline(target, ls="--", color="gray", lw=1, label=f"target accuracy {target:g}")
    if best is not None:
        ax.scatter([best.coverage], [best.accuracy], color="black", zorder=3)
        ax.annotate(
            f"threshold {best.threshold:.3f}\ncoverage {best.coverage:.1%}",
            (best.coverage, best.accuracy),
            textcoords="offset points",
            xytext=(-90, -35),
            fontsize=9,
        )
    ax.set_xlim(0, 1.02)
    ax.invert_xaxis()
    ax.set_xlabel("coverage (share of rows predicted; the rest abstain)")
    ax.set_ylabel("score")
    ax.set_title("Risk-coverage: abstaining below a confidence threshold")
    ax.legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def label_confusion_grid(counts: pd.DataFrame, path: Path) -> Path:
    """Multi-label: one 2x2 confusion matrix per label (rows: truly absent/present; columns: not given/given)."""
    cols = min(6, len(counts))
    rows = math.ceil(len(counts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.3 * rows), squeeze=False)
    for ax, (_, row) in zip(axes.flat, counts.iterrows(), strict=False):
        cells = np.array([[row.tn, row.fp], [row.fn, row.tp]]).astype(int)
        sns.heatmap(cells, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, linewidths=0.5, annot_kws={"size": 8})
        ax.set_title(f"{row.label} (F1 {row.f1:.2f})", fontsize=9)
        ax.set_xticklabels(["not given", "given"], fontsize=7)
        ax.set_yticklabels(["absent", "present"], fontsize=7, rotation=0)
    for ax in list(axes.flat)[len(counts) :]:
        ax.axis("off")
    fig.suptitle("Per-label confusion: truly absent/present against not given/given")
    fig.tight_layout()
    return save_figure(fig, path)


def cooccurrence_plot(true_counts: pd.DataFrame, predicted_counts: pd.DataFrame, path: Path) -> Path:
    """Multi-label: how often two labels occur on the same text, in the true and in the predicted label sets."""
    side = _side(len(true_counts))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, frame, title in ((axes[0], true_counts, "True"), (axes[1], predicted_counts, "Predicted")):
        _heatmap(ax, frame, "d", f"{title} label co-occurrence (diagonal: texts with the label)")
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.tight_layout()
    return save_figure(fig, path)


def label_wordcloud_plot(texts: dict[str, tuple[list[str], list[str]]], path: Path) -> Path:
    """Multi-label: per label, the words that set its wrongly decided texts apart from its rightly decided ones
    (``texts``: label -> (texts with an error on that label, texts with a right decision where it is present))."""
    title = "Words over-represented in texts with a wrong decision, by label (labels with most errors)"
    return cloud_grid(texts, title, path)
