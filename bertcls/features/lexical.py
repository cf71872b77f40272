"""The lexical view of a text: TF-IDF word (and optionally character) n-grams beside the sentence embedding.

scikit-learn's ``TfidfVectorizer`` learns the vocabulary and idf weights on the training split; a checkpoint keeps
them as plain data (a list of terms) and a tensor (the idf weights), and a vectorizer is rebuilt from those, so
nothing is pickled. The classifier adds a linear layer over these features to the head's logits
(:class:`bertcls.model.network.LexicalLayer`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from bertcls.config.settings import LexicalSection
from bertcls.model.encoder import bounded

if TYPE_CHECKING:
    import scipy.sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

logger = logging.getLogger(__name__)
VOCABULARY_KEY = "lexical_vocabulary"
IDF_PREFIX = "lexical_idf."


class LexicalSpec(BaseModel):
    """How the lexical features are made (part of a checkpoint's architecture record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    word_ngrams: tuple[int, int]
    char_ngrams: tuple[int, int] | None = None
    sublinear_tf: bool = True
    num_word_features: int = Field(ge=0)
    num_char_features: int = Field(0, ge=0)

    @property
    def num_features(self) -> int:
        return self.num_word_features + self.num_char_features


def _vectorizer(kind: str, ngrams: tuple[int, int], *, sublinear_tf: bool, **options):
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer = "word" if kind == "word" else "char_wb"
    return TfidfVectorizer(
        analyzer=analyzer, ngram_range=tuple(ngrams), sublinear_tf=sublinear_tf, dtype=np.float32, **options
    )


class LexicalFeatures:
    """Fitted TF-IDF vectorizers (word, and character n-grams when configured) with a stable column order."""

    def __init__(self, spec: LexicalSpec, vectorizers: dict[str, TfidfVectorizer]):
        self.spec = spec
        self.vectorizers = vectorizers

    @classmethod
    def fit(cls, texts: list[str], cfg: LexicalSection) -> LexicalFeatures:
        return cls.fit_transform(texts, cfg)[0]

    @classmethod
    def fit_transform(cls, texts: list[str], cfg: LexicalSection) -> tuple[LexicalFeatures, scipy.sparse.csr_matrix]:
        """Fitted vectorizers and the fitting texts' features, read in one pass (as ``TfidfVectorizer`` does)."""
        import scipy.sparse

        kinds = {"word": cfg.word_ngrams, "char": cfg.char_ngrams}
        texts = bounded(texts)
        fitted, sizes, parts = {}, {}, []
        for kind, ngrams in kinds.items():
            if ngrams is None:
                continue
            vectorizer = _vectorizer(
                kind,
                ngrams,
                sublinear_tf=cfg.sublinear_tf,
                min_df=min(cfg.min_df, len(texts)),
                max_features=cfg.max_features,
            )
            try:
                parts.append(vectorizer.fit_transform(texts))
            except ValueError:  # every term below min_df: fall back to every term
                vectorizer = _vectorizer(kind, ngrams, sublinear_tf=cfg.sublinear_tf, max_features=cfg.max_features)
                parts.append(vectorizer.fit_transform(texts))
            fitted[kind], sizes[kind] = vectorizer, len(vectorizer.vocabulary_)
        spec = LexicalSpec(
            word_ngrams=cfg.word_ngrams,
            char_ngrams=cfg.char_ngrams,
            sublinear_tf=cfg.sublinear_tf,
            num_word_features=sizes.get("word", 0),
            num_char_features=sizes.get("char", 0),
        )
        logger.info("Lexical features: %d word and %d character n-grams", sizes.get("word", 0), sizes.get("char", 0))
        return cls(spec, fitted), scipy.sparse.hstack(parts, format="csr", dtype=np.float32)

    def transform(self, texts: list[str]) -> scipy.sparse.csr_matrix:
        import scipy.sparse

        texts = bounded(texts)
        parts = [self.vectorizers[kind].transform(texts) for kind in ("word", "char") if kind in self.vectorizers]
        return scipy.sparse.hstack(parts, format="csr", dtype=np.float32)

    def to_payload(self) -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
        """Plain data (terms in column order) and tensors (idf weights) for a checkpoint."""
        vocabularies, tensors = {}, {}
        for kind, vectorizer in self.vectorizers.items():
            terms = vectorizer.get_feature_names_out().tolist()
            vocabularies[kind] = terms
            tensors[IDF_PREFIX + kind] = torch.from_numpy(np.asarray(vectorizer.idf_, dtype=np.float64))
        return vocabularies, tensors

    @classmethod
    def from_payload(cls, spec: LexicalSpec, vocabularies: dict[str, list[str]], tensors: dict[str, torch.Tensor]):
        """Rebuild the vectorizers from a checkpoint (no fitting: the stored vocabulary and idf weights are used)."""
        ngrams = {"word": spec.word_ngrams, "char": spec.char_ngrams}
        vectorizers = {}
        for kind, terms in vocabularies.items():
            ngram_range = ngrams[kind]
            if ngram_range is None:
                raise ValueError(f"the checkpoint holds {kind} n-grams that its lexical record does not describe")
            vectorizer = _vectorizer(kind, ngram_range, sublinear_tf=spec.sublinear_tf, vocabulary=terms)
            vectorizer.idf_ = tensors[IDF_PREFIX + kind].numpy()
            vectorizers[kind] = vectorizer
        return cls(spec, vectorizers)


def sparse_batch(matrix: scipy.sparse.csr_matrix, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows of a CSR matrix as a torch sparse COO tensor (never densified: vocabularies run to 10^5 columns)."""
    part = matrix[np.asarray(rows)].tocoo()
    indices = torch.from_numpy(np.vstack([part.row, part.col]).astype(np.int64))
    values = torch.from_numpy(part.data.astype(np.float32))
    return torch.sparse_coo_tensor(
        indices, values, part.shape, device=device, check_invariants=False, is_coalesced=True
    )  # rows of a CSR matrix come sorted, without duplicate entries
