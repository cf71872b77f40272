"""What ``bertcls explain`` writes: a CSV with a row per text and explained label, and the page (see ``page``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from bertcls.explain.explainer import Explanation, LabelExplanation
from bertcls.explain.semantic import Method
from bertcls.runtime.fileio import write_csv_atomic
from bertcls.runtime.formulas import escape_table

TOP_WORDS = 5


@dataclass(frozen=True)
class ExplainedText:
    """An explanation and where its text came from: the CSV line (None for ``--text``) and the true label(s)
    when the input had them."""

    explanation: Explanation
    source_row: int | None = None
    truth: str | None = None


@dataclass(frozen=True)
class ErrorToExplain:
    """One of the most confident errors, for report.html's explanations: the text, the label to explain (the
    predicted one, or a multi-label model's wrong decision), how the page names it, and its explanation once made."""

    text: str
    label: str
    heading: str
    truth: str | None = None
    explanation: ExplainedText | None = None  # made by explain_errors


def word_totals(explanation: Explanation, item: LabelExplanation) -> list[tuple[str, float]]:
    """Each distinct word (case-folded) with its summed attribution, most positive first."""
    totals: dict[str, float] = {}
    shown: dict[str, str] = {}
    for index, value in enumerate(item.words):
        word = explanation.words.word(index)
        key = word.casefold()
        totals[key] = totals.get(key, 0.0) + float(value)
        shown.setdefault(key, word)
    return sorted(((shown[k], v) for k, v in totals.items()), key=lambda pair: -pair[1])


def top_words(explanation: Explanation, item: LabelExplanation, count: int = TOP_WORDS) -> tuple[str, str]:
    """The ``count`` words that raise the score most, and those that lower it most, as ``word +0.123; ...``."""
    ranked = word_totals(explanation, item)
    positive = [(w, v) for w, v in ranked if v > 0][:count]
    negative = [(w, v) for w, v in reversed(ranked) if v < 0][:count]
    join = lambda pairs: "; ".join(f"{w} {v:+.3f}" for w, v in pairs)  # noqa: E731
    return join(positive), join(negative)


def explanation_rows(items: list[ExplainedText]) -> pd.DataFrame:
    rows = []
    for item in items:
        for label in item.explanation.explained:
            positive, negative = top_words(item.explanation, label)
            rows.append(
                {
                    "source_row": "" if item.source_row is None else item.source_row,
                    "label": label.label,
                    "probability": round(label.probability, 6),
                    "score": round(label.score, 6),
                    "lexical_part": round(label.lexical_total, 6),
                    "semantic_part": round(label.semantic_total, 6),
                    "base": round(label.base, 6),
                    "top_positive": positive,
                    "top_negative": negative,
                    "completeness_gap": round(label.gap, 6),
                    "flagged": bool(label.flagged),
                    "method": item.explanation.method,
                    "steps": label.steps,
                    "true_label": item.truth or "",
                    "text": item.explanation.text,
                }
            )
    return pd.DataFrame(rows)


def write_csv(items: list[ExplainedText], path: Path) -> Path:
    return write_csv_atomic(path, escape_table(explanation_rows(items)))


class WordRecord(BaseModel):
    """One word: where it is in the text, and what it adds to the label's score (lexical + semantic)."""

    word: str
    start: int
    end: int
    lexical: float
    semantic: float


class LabelRecord(BaseModel):
    """One explained label, as the server's ``POST /v1/explain`` returns it."""

    label: str
    probability: float
    score: float
    base: float
    lexical_part: float
    semantic_part: float
    completeness_gap: float
    flagged: bool
    steps: int  # integration steps per path that reached the gap
    words: list[WordRecord]


class ExplanationRecord(BaseModel):
    probabilities: dict[str, float]
    # the paths the semantic part integrated along: expected (base: the mean over random partial removals),
    # presence (base: the words removed) or embeddings (base: [PAD] in their place)
    method: Method
    explained: list[LabelRecord]

    @classmethod
    def of(cls, explanation: Explanation) -> ExplanationRecord:
        words = explanation.words
        return cls(
            probabilities={n: float(p) for n, p in zip(explanation.labels, explanation.probabilities, strict=True)},
            method=explanation.method,
            explained=[
                LabelRecord(
                    label=item.label,
                    probability=item.probability,
                    score=item.score,
                    base=item.base,
                    lexical_part=item.lexical_total,
                    semantic_part=item.semantic_total,
                    completeness_gap=item.gap,
                    flagged=item.flagged,
                    steps=item.steps,
                    words=[
                        WordRecord(
                            word=words.word(i),
                            start=int(words.starts[i]),
                            end=int(words.ends[i]),
                            lexical=float(item.lexical[i]),
                            semantic=float(item.semantic[i]),
                        )
                        for i in range(len(words))
                    ],
                )
                for item in explanation.explained
            ],
        )
