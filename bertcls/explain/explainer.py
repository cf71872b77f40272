"""One text's explanation: per word, how much the lexical part (exact) and the semantic part (integrated gradients)
add to each explained label's score; the two add up because the model adds their logits."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from bertcls.explain.lexical import LexicalPart, lexical_part
from bertcls.explain.semantic import (
    PRESENCE_METHODS,
    DocumentScores,
    Endpoints,
    Method,
    SemanticPart,
    TokenWindows,
    endpoints,
    presence_problem,
    random_removals,
    semantic_part,
)
from bertcls.explain.words import Words
from bertcls.model.classifier import Classifier
from bertcls.model.encoder import bounded
from bertcls.runtime.errors import BertclsError, DataError

if TYPE_CHECKING:
    from bertcls.config.settings import ExplainSection

logger = logging.getLogger(__name__)
MAX_GAP = 0.05  # a text whose completeness gap is larger is flagged: its semantic attributions are approximate


def completeness_gap(semantic: SemanticPart, lexical: LexicalPart) -> float:
    """How far the attributions miss what the words add to the score: integrated gradients' residual, relative to
    the part of the score the words explain (the semantic difference to the baseline plus the lexical words)."""
    explained = abs(semantic.score - semantic.baseline) + abs(float(lexical.words.sum()))
    return abs(semantic.residual) / max(explained, 1e-3)


@dataclass(frozen=True)
class LabelExplanation:
    """Why one label got its score: per word, the lexical and the semantic contributions; ``base``: what no word
    carries (the lexical layer's bias, the score of the semantic baseline (the mean over the random partial
    removals, the text with its words removed, or [PAD] in their place), and the rare n-gram or word piece that
    could not be placed on a word); ``steps``: the integration steps per path that reached ``gap``."""

    label: str
    probability: float
    score: float
    lexical: np.ndarray
    semantic: np.ndarray
    base: float
    gap: float
    steps: int

    @property
    def words(self) -> np.ndarray:
        return self.lexical + self.semantic

    @property
    def lexical_total(self) -> float:
        return float(self.lexical.sum())

    @property
    def semantic_total(self) -> float:
        return float(self.semantic.sum())

    @property
    def flagged(self) -> bool:
        return self.gap > MAX_GAP

    def lexical_share(self) -> float:
        """The lexical part's share of the words' absolute attribution (0 to 1)."""
        mass = np.abs(self.lexical).sum() + np.abs(self.semantic).sum()
        return float(np.abs(self.lexical).sum() / mass) if mass > 0 else 0.0


@dataclass(frozen=True)
class Explanation:
    """A text, its words, every label's probability, and the explanations of the labels explained.
    ``read_until``: the character where the encoder stopped reading (words after it carry no semantic part);
    ``method``: what the semantic part integrated over (expected, presence or embeddings), which sets its
    baseline."""

    text: str
    words: Words
    labels: list[str]
    probabilities: np.ndarray
    explained: list[LabelExplanation]
    read_until: int
    method: Method

    def word_list(self) -> list[str]:
        return [self.words.word(i) for i in range(len(self.words))]


def label_index(name: str, labels: list[str]) -> int:
    """The position of ``name`` among a model's labels; an unknown one is one sentence naming them."""
    if name not in labels:
        raise DataError(f"Unknown label {name!r}; this model's labels are {', '.join(labels)}.")
    return labels.index(name)


class Explainer:
    """Explains texts with a saved model (the torch checkpoint: encoder, head and lexical layer), in fp32."""

    def __init__(
        self,
        classifier: Classifier,
        steps: int = 8,
        method: Method = "expected",
        *,
        baselines: int = 4,
        seed: int = 0,
        max_steps: int = 64,
    ):
        """``method``: see :mod:`bertcls.explain.semantic`; ``steps``: integration steps per path, doubled (up to
        ``max_steps``) for a label whose completeness gap is over 5%; ``baselines`` and ``seed``: ``expected``'s
        random partial removals per text (drawn from the seed and the text, so a text's explanation does not depend
        on what else is explained)."""
        encoder = classifier.text_encoder()
        if not encoder.tokenizer.is_fast:
            raise BertclsError(
                f"The encoder at {encoder.folder} has no fast tokenizer (tokenizer.json); explanations need one to map "
                "word pieces back to the words of the text."
            )
        network = classifier.network.eval()
        for param in [*network.parameters(), *encoder.parameters()]:
            param.requires_grad = False
        encoder.to(torch.device("cpu")).eval()
        network.to(torch.device("cpu"))
        self.classifier = classifier
        self.steps, self.max_steps = steps, max_steps
        self.baselines, self.seed = baselines, seed
        self.mix = classifier.task.score_mix(len(classifier.labels))
        self.scores = DocumentScores(encoder, classifier.windowing, network.head, torch.from_numpy(self.mix))
        self.method = method
        problem = presence_problem(self.scores) if method in PRESENCE_METHODS else None
        if problem is not None:
            logger.warning(
                "This encoder cannot weigh its tokens by presence (%s); explaining by embeddings instead.", problem
            )
            self.method = "embeddings"

    @classmethod
    def configured(cls, classifier: Classifier, cfg: ExplainSection) -> Explainer:
        """The explainer the ``explain:`` settings describe."""
        return cls(classifier, cfg.steps, cfg.method, baselines=cfg.baselines, seed=cfg.seed, max_steps=cfg.max_steps)

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def label_index(self, name: str) -> int:
        return label_index(name, self.labels)

    def tfidf_row(self, text: str):
        """The text's TF-IDF row (None for a model without a lexical layer)."""
        features = self.classifier.lexical
        return None if features is None or self.classifier.network.lexical is None else features.transform([text])

    def lexical_logits(self, row) -> np.ndarray:
        layer = self.classifier.network.lexical
        if layer is None or row is None:
            return np.zeros(len(self.labels), dtype=np.float32)
        return (row @ layer.weight.detach().numpy() + layer.bias.detach().numpy()).ravel()

    def lexical_parts(self, text: str, words: Words, targets: list[int], row) -> list[LexicalPart]:
        layer, features = self.classifier.network.lexical, self.classifier.lexical
        if layer is None or features is None or row is None:
            return [LexicalPart(np.zeros(len(words)), 0.0, 0.0) for _ in targets]
        mix = self.mix[:, targets]
        weight, bias = layer.weight.detach().numpy() @ mix, layer.bias.detach().numpy() @ mix
        return lexical_part(features, weight, bias, text, words, row)

    def random_starts(self, text: str, words: Words, windows: TokenWindows) -> torch.Tensor | None:
        """``expected``'s random partial removals of this text (None for the other methods), seeded by the
        explainer's seed and the text itself."""
        if self.method != "expected":
            return None
        digest = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        return random_removals(windows, words, self.baselines, np.random.default_rng([self.seed, digest]))

    def explain(self, text: str, label: str | None = None, steps: int | None = None) -> Explanation:
        """The explanation of ``label``, or of the labels the model gives the text (``steps``: to start from
        instead of the explainer's)."""
        if not text.strip():
            raise DataError("The text to explain is empty; give a text with words.")
        text = bounded([text])[0]  # the model reads no more of a cell; neither do the words and the page
        words = Words.of(text)
        windows = TokenWindows.of(self.scores.encoder, self.classifier.windowing, text)
        ends = endpoints(self.scores, windows, self.method, self.random_starts(text, words, windows))
        row = self.tfidf_row(text)
        logits = torch.from_numpy(ends.text_logits + self.lexical_logits(row))
        probs = self.classifier.network.probabilities(logits[None, :])[0].numpy()
        task = self.classifier.task
        targets = [self.label_index(label)] if label else task.explained_labels(probs, self.classifier.rule)
        lexical = self.lexical_parts(text, words, targets, row)
        explained = []
        for target, part in zip(targets, lexical, strict=True):
            explained.append(self._integrate(words, windows, ends, target, part, float(probs[target]), steps))
            if explained[-1].flagged:
                gap, name = 100 * explained[-1].gap, self.labels[target]
                logger.warning("Completeness gap %.1f%% for label %s: approximate attributions.", gap, name)
        read = windows.pieces[windows.pieces >= 0]
        read_until = max((windows.spans[i][1] for i in np.unique(read)), default=0)
        return Explanation(text, words, self.labels, probs, explained, int(read_until), self.method)

    def _integrate(
        self,
        words: Words,
        windows: TokenWindows,
        ends: Endpoints,
        target: int,
        lexical: LexicalPart,
        probability: float,
        steps: int | None,
    ) -> LabelExplanation:
        """One label's explanation at ``steps`` (or the explainer's), the steps doubled while the gap is over 5%
        and the doubled count is within ``max_steps``."""
        count = steps or self.steps
        while True:
            semantic = semantic_part(self.scores, windows, ends, target, count)
            explained = self._combine(words, windows, semantic, lexical, probability, count)
            if not explained.flagged or 2 * count > self.max_steps:
                return explained
            count *= 2

    def _combine(
        self,
        words: Words,
        windows: TokenWindows,
        semantic: SemanticPart,
        lexical: LexicalPart,
        probability: float,
        steps: int,
    ) -> LabelExplanation:
        on_words = np.zeros(len(words), dtype=np.float64)
        unplaced = 0.0
        for value, span in zip(semantic.pieces, windows.spans, strict=True):
            if not words.spread(on_words, *span, value):
                unplaced += value
        return LabelExplanation(
            label=self.labels[semantic.target],
            probability=probability,
            score=semantic.score + lexical.total,
            lexical=lexical.words,
            semantic=on_words,
            base=semantic.baseline + lexical.bias + lexical.unplaced + unplaced,
            gap=completeness_gap(semantic, lexical),
            steps=steps,
        )
