"""The lexical part of an explanation, exact: the TF-IDF layer is linear, so each n-gram adds its tf-idf value times
its weight to each label's score; the n-gram's share goes to the words it covers.

N-grams are found as the vectorizers find them (the text lowercased first, then tokenised), with their character
spans in the original text, so that each share lands on the words it came from."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from bertcls.explain.words import Words
from bertcls.features.lexical import LexicalFeatures

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


@dataclass(frozen=True)
class Lowered:
    """A text lowercased as the vectorizers lowercase it, and where each lowered character came from."""

    text: str
    origin: np.ndarray  # lowered position -> original position

    @classmethod
    def of(cls, text: str) -> Lowered:
        parts = [ch.lower() for ch in text]  # str.lower() works character by character, so the two agree
        origin = np.repeat(np.arange(len(text)), [len(p) for p in parts])
        return cls("".join(parts), origin)

    def span(self, start: int, end: int) -> Span:
        """The original characters of the lowered ``[start, end)``."""
        return int(self.origin[start]), int(self.origin[end - 1]) + 1


def word_ngrams(vectorizer, lowered: Lowered) -> dict[str, list[Span]]:
    """Each word n-gram with the spans of its words, over all its occurrences."""
    tokens = [(m.group(), lowered.span(*m.span())) for m in re.finditer(vectorizer.token_pattern, lowered.text)]
    low, high = vectorizer.ngram_range
    found: dict[str, list[Span]] = defaultdict(list)
    for n in range(low, high + 1):
        for i in range(len(tokens) - n + 1):
            found[" ".join(t for t, _ in tokens[i : i + n])] += [span for _, span in tokens[i : i + n]]
    return found


def char_ngrams(vectorizer, lowered: Lowered) -> dict[str, list[Span]]:
    """Each character n-gram (``char_wb``: inside a whitespace-separated word padded with one space each side, as
    sklearn builds them) with the characters it covers."""
    low, high = vectorizer.ngram_range
    found: dict[str, list[Span]] = defaultdict(list)
    for match in WHITESPACE_WORD.finditer(lowered.text):
        padded, start = f" {match.group()} ", match.start()
        for n in range(low, high + 1):
            offset = 0
            while True:
                first, last = max(offset - 1, 0), min(offset - 1 + n, len(padded) - 2)  # in the word, not the pads
                found[padded[offset : offset + n]].append(lowered.span(start + first, start + max(last, first + 1)))
                if offset + n >= len(padded):
                    break
                offset += 1
            if offset == 0:  # a word shorter than n is one n-gram, counted once (sklearn stops there too)
                break
    return found


def occurrences(features: LexicalFeatures, text: str) -> dict[int, list[Span]]:
    """Column index -> the character spans its n-gram covers in ``text`` (each occurrence's words)."""
    lowered, found, offset = Lowered.of(text), {}, 0
    for kind in ("word", "char"):
        vectorizer = features.vectorizers.get(kind)
        if vectorizer is None:
            continue
        grams = word_ngrams(vectorizer, lowered) if kind == "word" else char_ngrams(vectorizer, lowered)
        vocabulary = vectorizer.vocabulary_
        for gram, spans in grams.items():
            column = vocabulary.get(gram)
            if column is not None:
                found[offset + column] = spans
        offset += len(vocabulary)
    return found


def shares(features: LexicalFeatures, text: str, words: Words) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column, word, share) triples: the share of each word in each n-gram column of ``text`` (the spans of a
    column share it equally, and a span shares its part equally among the words it overlaps)."""
    columns, on_words, parts = [], [], []
    for column, spans in occurrences(features, text).items():
        for start, end in spans:
            covered = words.covering(start, end)
            columns += [column] * len(covered)
            on_words += covered.tolist()
            parts += [1.0 / len(spans) / len(covered)] * len(covered)
    return np.asarray(columns, np.int64), np.asarray(on_words, np.int64), np.asarray(parts, np.float64)


def lexical_part(
    features: LexicalFeatures, weight: np.ndarray, bias: np.ndarray, text: str, words: Words, row=None
) -> list[LexicalPart]:
    """One :class:`LexicalPart` per column of ``weight`` (features x scores, already mixed into the explained
    scores), for ``text`` (already cut at ``MAX_TEXT_CHARS``) read as the model reads it; ``row``: its TF-IDF row
    when the caller has it."""
    found = (features.transform([text]) if row is None else row).tocoo()
    values = np.zeros(weight.shape[0], np.float64)
    values[found.col] = found.data
    columns, on_words, part = shares(features, text, words)
    parts = []
    for target in range(weight.shape[1]):
        contribution = values * weight[:, target]
        scores = np.bincount(on_words, weights=contribution[columns] * part, minlength=len(words))
        parts.append(LexicalPart(scores, float(bias[target]), float(contribution.sum() - scores.sum())))
    return parts
