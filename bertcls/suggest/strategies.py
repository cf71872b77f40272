"""How informative each pool text would be to label, from the model's calibrated probabilities (and, for
``diverse``, its document vectors). Every score is "higher: label it sooner"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bertcls.runtime.errors import DataError
from bertcls.task import DecisionRule, Task

Strategy = Literal["uncertainty", "margin", "entropy", "activelab", "diverse"]
STRATEGIES: tuple[str, ...] = ("uncertainty", "margin", "entropy", "activelab", "diverse")
CANDIDATES_PER_PICK = 5  # diverse: clusters are drawn over the 5n most uncertain texts


@dataclass(frozen=True)
class Selection:
    """The chosen pool rows (positions in the scored texts), best first, with their scores and why."""

    rows: np.ndarray
    scores: np.ndarray
    reasons: list[str]


def closeness(probs: np.ndarray, rule: DecisionRule) -> np.ndarray:
    """Multi-label: per label, how close the probability is to that label's threshold (1 at it, 0 at 0 or 1)."""
    cut = np.full(probs.shape[1], 0.5) if rule.thresholds is None else np.asarray(rule.thresholds, np.float64)
    return 1.0 - np.abs(probs - cut) / np.maximum(cut, 1.0 - cut)


def least_confidence(probs: np.ndarray, task: Task, rule: DecisionRule) -> np.ndarray:
    """One label per text: 1 - the top probability. Multi-label: the closeness of its least sure label."""
    if task.per_label_thresholds:
        return closeness(probs, rule).max(axis=1)
    return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray, task: Task, rule: DecisionRule) -> np.ndarray:
    """1 - (top probability - second). Multi-label: the mean closeness over the labels."""
    if task.per_label_thresholds:
        return closeness(probs, rule).mean(axis=1)
    top_two = np.sort(probs, axis=1)[:, -2:]
    return 1.0 - (top_two[:, 1] - top_two[:, 0])


def entropy(probs: np.ndarray, task: Task, rule: DecisionRule) -> np.ndarray:  # noqa: ARG001 - one signature
    """Shannon entropy, normalised to [0, 1]. Multi-label: the mean binary entropy of the labels."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    if task.per_label_thresholds:
        q = np.clip(1.0 - probs.astype(np.float64), 1e-12, 1.0)
        return (-(p * np.log2(p) + q * np.log2(q))).mean(axis=1)
    return -(p * np.log(p)).sum(axis=1) / np.log(probs.shape[1])


def activelab(probs: np.ndarray, task: Task, rule: DecisionRule) -> np.ndarray:  # noqa: ARG001 - one signature
    """cleanlab's ActiveLab score of unlabelled texts from their probabilities alone (1 - score: lower is more
    informative there)."""
    if task.per_label_thresholds:
        raise DataError("--strategy activelab scores one label per text; for a multi-label model use another one.")
    from cleanlab.multiannotator import get_active_learning_scores

    _, unlabelled = get_active_learning_scores(pred_probs_unlabeled=np.asarray(probs, np.float64))
    return 1.0 - np.asarray(unlabelled, np.float64)


SCORERS = {"uncertainty": least_confidence, "margin": margin, "entropy": entropy, "activelab": activelab}


def diverse_uncertainty(probs: np.ndarray, task: Task, rule: DecisionRule) -> np.ndarray:
    """What ``diverse`` ranks by: the margin for one label per text (measured ahead of least confidence, README),
    the least sure label for several."""
    return least_confidence(probs, task, rule) if task.per_label_thresholds else margin(probs, task, rule)


def diverse(probs: np.ndarray, vectors: np.ndarray, count: int, task: Task, rule: DecisionRule, seed: int) -> Selection:
    """The most uncertain text of each of ``count`` k-means clusters of the ``5 x count`` most uncertain texts'
    vectors: uncertain, and spread over the embedding space instead of near-copies of one confusing text."""
    from sklearn.cluster import KMeans

    scores = diverse_uncertainty(probs, task, rule)
    candidates = np.argsort(-scores, kind="stable")[: CANDIDATES_PER_PICK * count]
    if len(candidates) <= count:
        return Selection(candidates, scores[candidates], ["uncertain"] * len(candidates))
    unit = vectors[candidates] / np.maximum(np.linalg.norm(vectors[candidates], axis=1, keepdims=True), 1e-12)
    clusters = KMeans(n_clusters=count, n_init=1, random_state=seed).fit_predict(unit)
    firsts = [(int(candidates[clusters == k][0]), k) for k in range(count) if (clusters == k).any()]  # sorted
    firsts.sort(key=lambda pair: -scores[pair[0]])
    rows = np.asarray([row for row, _ in firsts], dtype=np.int64)
    reasons = [f"uncertain; the most uncertain of cluster {k + 1} of {count}" for _, k in firsts]
    return Selection(rows, scores[rows], reasons)


def select(
    strategy: str, probs: np.ndarray, vectors: np.ndarray, count: int, task: Task, rule: DecisionRule, seed: int = 0
) -> Selection:
    """The ``count`` rows to label next by ``strategy``, best first."""
    if strategy == "diverse":
        return diverse(probs, vectors, count, task, rule, seed)
    scores = SCORERS[strategy](probs, task, rule)
    rows = np.argsort(-scores, kind="stable")[:count]
    return Selection(rows, scores[rows], [strategy] * len(rows))
