"""Texts to embeddings through the cache; the encoder loads only when some text is not cached."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from bertcls.config import EncoderSection
from bertcls.embedding_cache import CacheStats, EmbeddingCache, embed_cached
from bertcls.encoder import Encoder, ProgressFn, architecture, fingerprint, has_normalize, resolve_encoder_folder

logger = logging.getLogger(__name__)


class EmbeddingService:
    """Owns the encoder folder, its fingerprint and the embedding cache for one max_seq_len and pooling."""

    def __init__(self, cfg: EncoderSection, max_seq_len: int, output_root: Path, device: torch.device):
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.device = device
        self.folder = resolve_encoder_folder(cfg, output_root).resolve()
        self.fingerprint = fingerprint(self.folder)
        self.cache = EmbeddingCache(output_root, self.fingerprint, max_seq_len, cfg.pooling)
        self.stats = CacheStats()
        self._encoder: Encoder | None = None
        self.progress: ProgressFn | None = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self.folder, self.max_seq_len, self.cfg.pooling)
        return self._encoder

    def reload_encoder(self) -> Encoder:
        """Drop the (possibly fine-tuned) encoder and load the pretrained one again."""
        self._encoder = None
        return self.encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        logger.info("Encoding %d texts not found in the cache", len(texts))
        vectors = self.encoder.embed(texts, self.cfg.encode_batch_size, self.device, self.progress)
        return vectors, self.encoder.token_lengths(texts)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and untruncated token lengths, in input order."""
        return embed_cached(texts, self.cache, self._encode, self.stats)

    @property
    def dim(self) -> int:
        return architecture(self.folder)["dim"]

    def describe(self) -> dict:
        """Plain metadata about the encoder for checkpoints."""
        return {
            "name_or_path": self.cfg.name_or_path,
            "folder": str(self.folder),
            "fingerprint": self.fingerprint,
            **architecture(self.folder),
            "pooling": self.cfg.pooling,
            "normalize": has_normalize(self.folder),
            "max_seq_len": self.max_seq_len,
        }


def truncation_summary(lengths: np.ndarray, max_seq_len: int) -> dict[str, float]:
    truncated = int((lengths > max_seq_len).sum())
    return {"truncated": truncated, "total": int(len(lengths)), "fraction": truncated / max(1, len(lengths))}
