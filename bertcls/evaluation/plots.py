"""Evaluation plots (matplotlib Agg backend), sized to stay readable from 2 to 20 classes."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bertcls.fileio import atomic_path  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
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
    return _save(fig, path)


def report_heatmap(report: pd.DataFrame, path: Path) -> Path:
    """Per-class precision, recall and F1."""
    data = report.set_index("label")[["precision", "recall", "f1"]]
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.45 * len(data) + 1.5)))
    sns.heatmap(data, annot=True, fmt=".3f", cmap="RdYlGn", vmin=0, vmax=1, ax=ax, linewidths=0.5)
    ax.set_title("Classification report")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelrotation=0)
    fig.tight_layout()
    return _save(fig, path)


def confidence_plot(predictions: pd.DataFrame, path: Path) -> Path:
    correct = predictions.true_label == predictions.predicted_label
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 21)
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
    return _save(fig, path)


def confusion_pairs_plot(pairs: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(pairs) + 1.2)))
    if pairs.empty:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center", fontsize=14)
        ax.axis("off")
    else:
        names = [f"{t} -> {p}" for t, p in zip(pairs.true_label, pairs.predicted_label, strict=True)]
        ax.barh(names[::-1], pairs["count"][::-1], color="tab:orange")
        ax.set_xlabel("errors")
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Most frequent confusions (true -> predicted)")
    fig.tight_layout()
    return _save(fig, path)


def length_plot(predictions: pd.DataFrame, path: Path) -> Path:
    correct = predictions.true_label == predictions.predicted_label
    lengths = predictions.text.str.split().str.len()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(1, int(np.percentile(lengths, 99))) if len(lengths) else 1
    bins = np.linspace(0, top, 25)
    ax.hist(lengths[correct].clip(upper=top), bins=bins, alpha=0.7, density=True, label="correct", color="tab:green")
    if (~correct).any():
        ax.hist(lengths[~correct].clip(upper=top), bins=bins, alpha=0.7, density=True, label="errors", color="tab:red")
    ax.set_xlabel("text length (words)")
    ax.set_ylabel("density")
    ax.set_title("Text length of errors vs correct predictions")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def wordcloud_plot(predictions: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """One word cloud per true class of its misclassified texts."""
    from wordcloud import STOPWORDS, WordCloud

    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels, strict=False):
        wrong = predictions[(predictions.true_label == label) & (predictions.predicted_label != label)]
        ax.axis("off")
        ax.set_title(f"{label} ({len(wrong)} error{'' if len(wrong) == 1 else 's'})", fontsize=11)
        if wrong.empty:
            ax.text(0.5, 0.5, "no errors", ha="center", va="center", fontsize=13, color="gray", transform=ax.transAxes)
            continue
        try:
            cloud = WordCloud(width=420, height=300, background_color="white", stopwords=STOPWORDS, random_state=0)
            ax.imshow(cloud.generate(" ".join(wrong.text)), interpolation="bilinear")
        except ValueError:
            ax.text(0.5, 0.5, "no words to show", ha="center", va="center", color="gray", transform=ax.transAxes)
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    fig.suptitle("Words in misclassified texts, by true class")
    fig.tight_layout()
    return _save(fig, path)
