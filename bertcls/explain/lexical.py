"""The lexical part of an explanation, exact: the TF-IDF layer is linear, so each n-gram adds its tf-idf value times
its weight to each label's score; the n-gram's share goes to the words it covers."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from bertcls.explain.words import Words
from bertcls.features.lexical import LexicalFeatures
from bertcls.model.encoder import bounded

Span = tuple[int, int]
WHITESPACE_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class LexicalPart:
    """Per word, the lexical contribution to one label's score; ``bias``: the layer's bias in that score;
    ``unplaced``: the contribution of n-grams whose words could not be found in the text (normally 0)."""

    words: np.ndarray
    bias: float
    unplaced: float

    @property
    def total(self) -> float:
        return float(self.words.sum()) + self.bias + self.unplaced


def _word_occurrences(vectorizer, text: str) -> dict[str, list[list[Span]]]:
    """Each word n-gram of ``text``, as the vectorizer reads it, with the spans of the words of each occurrence."""
    tokens = [(m.group().lower(), m.span()) for m in re.finditer(vectorizer.token_pattern, text)]
    low, high = vectorizer.ngram_range
    found: dict[str, list[list[Span]]] = defaultdict(list)
    for n in range(low, high + 1):
        for i in range(len(tokens) - n + 1):
            part = tokens[i : i + n]
            found[" ".join(t for t, _ in part)].append([span for _, span in part])
    return found


def _char_occurrences(vectorizer, text: str) -> dict[str, list[list[Span]]]:
    """Each character n-gram (within word boundaries) with the whitespace-separated word it came from."""
    analyze = vectorizer.build_analyzer()
    found: dict[str, list[list[Span]]] = defaultdict(list)
    for match in WHITESPACE_WORD.finditer(text):
        for gram in analyze(match.group()):
            found[gram].append([match.span()])
    return found


def occurrences(features: LexicalFeatures, text: str) -> dict[int, list[list[Span]]]:
    """Column index -> where the n-gram of that column occurs (a list of word spans per occurrence)."""
    found: dict[int, list[list[Span]]] = {}
    offset = 0
    for kind in ("word", "char"):
        vectorizer = features.vectorizers.get(kind)
        if vectorizer is None:
            continue
        grams = _word_occurrences(vectorizer, text) if kind == "word" else _char_occurrences(vectorizer, text)
        vocabulary = vectorizer.vocabulary_
        for gram, places in grams.items():
            column = vocabulary.get(gram)
            if column is not None:
                found[offset + column] = places
        offset += len(vocabulary)
    return found


def lexical_part(
    features: LexicalFeatures, weight: np.ndarray, bias: np.ndarray, text: str, words: Words
) -> list[LexicalPart]:
    """One :class:`LexicalPart` per column of ``weight`` (features x scores, already mixed into the explained
    scores), for ``text`` read as the model reads it."""
    text = bounded([text])[0]
    row = features.transform([text]).tocoo()
    places = occurrences(features, text)
    parts = []
    for target in range(weight.shape[1]):
        scores = np.zeros(len(words), dtype=np.float64)
        unplaced = 0.0
        for column, value in zip(row.col, row.data, strict=True):
            contribution = float(value) * float(weight[column, target])
            spans = [span for occurrence in places.get(int(column), []) for span in occurrence]
            placed = [span for span in spans if words.covering(*span).size]
            for span in placed:
                words.spread(scores, *span, contribution / len(placed))
            if not placed:
                unplaced += contribution
        parts.append(LexicalPart(scores, float(bias[target]), unplaced))
    return parts
