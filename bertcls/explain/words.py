"""Words of a text as a reader sees them, and the spreading of a score over the words a character span covers."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]+")


@dataclass(frozen=True)
class Words:
    """The words (runs of letters and digits, or of punctuation) of a text, with their character spans."""

    text: str
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, text: str) -> Words:
        spans = [(m.start(), m.end()) for m in WORD.finditer(text)]
        starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
        ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
        return cls(text, starts, ends)

    def __len__(self) -> int:
        return len(self.starts)

    def word(self, index: int) -> str:
        return self.text[self.starts[index] : self.ends[index]]

    def word_list(self) -> list[str]:
        return [self.word(i) for i in range(len(self))]

    def covered_ranges(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each character span ``[start, end)``, the words that overlap it: indices ``first`` up to ``last``
        (exclusive; equal when none does). Words are sorted and disjoint."""
        first = np.searchsorted(self.ends, starts, side="right")
        return first, np.maximum(first, np.searchsorted(self.starts, ends, side="left"))

    def covering(self, start: int, end: int) -> np.ndarray:
        """Indices of the words that overlap the characters ``[start, end)``."""
        first, last = self.covered_ranges(np.array([start]), np.array([end]))
        return np.arange(first[0], last[0])

    def spread(self, scores: np.ndarray, start: int, end: int, value: float) -> bool:
        """Add ``value`` to the words overlapping ``[start, end)``, shared equally; False when none does."""
        covered = self.covering(start, end)
        if not len(covered):
            return False
        scores[covered] += value / len(covered)
        return True
