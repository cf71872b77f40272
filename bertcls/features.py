"""Texts to embeddings through the cache; the encoder loads only when some text is not cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertcls.config import EncoderSection
from bertcls.embedding_cache import CacheStats, EmbeddingCache, embed_cached, embed_keyed, window_hash
from bertcls.encoder import (
    Encoder,
    ProgressFn,
    architecture,
    fingerprint,
    has_normalize,
    load_tokenizer,
    pool_windows,
    resolve_encoder_folder,
    split_into_windows,
)

logger = logging.getLogger(__name__)


@dataclass
class ChunkReport:
    """How many texts were split into several windows, into how many, and how many were still cut short."""

    texts: int = 0
    chunked: int = 0
    windows: int = 0
    cut: int = 0

    def add(self, windows_per_text: np.ndarray, lengths: np.ndarray, max_seq_len: int, stride: int) -> None:
        covered = (max_seq_len - 2) + (windows_per_text - 1) * stride  # tokens the windows reach, specials aside
        self.texts += len(windows_per_text)
        self.chunked += int((windows_per_text > 1).sum())
        self.windows += int(windows_per_text.sum())
        self.cut += int((lengths - 2 > covered).sum())

    def as_dict(self) -> dict[str, int]:
        return {"texts": self.texts, "chunked": self.chunked, "windows": self.windows, "cut": self.cut}


class EmbeddingService:
    """Owns the encoder folder, its fingerprint and the embedding cache for one max_seq_len and pooling."""

    def __init__(self, cfg: EncoderSection, max_seq_len: int, output_root: Path, device: torch.device):
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.device = device
        self.folder = resolve_encoder_folder(cfg, output_root).resolve()
        self.fingerprint = fingerprint(self.folder)
        self.cache = EmbeddingCache(output_root, self.fingerprint, max_seq_len, cfg.pooling)
        self.window_cache = EmbeddingCache(output_root, self.fingerprint, max_seq_len, cfg.pooling, kind="windows")
        self.stride = cfg.stride_for(max_seq_len)
        self.normalize = has_normalize(self.folder)
        self.stats = CacheStats()
        self.chunking = ChunkReport()
        self._encoder: Encoder | None = None
        self._tokenizer = None
        self.progress: ProgressFn | None = None

    @property
    def tokenizer(self):
        """The encoder's tokenizer, without loading the encoder's weights when they are not needed."""
        if self._encoder is not None:
            return self._encoder.tokenizer
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.folder)
        return self._tokenizer

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
        """Embeddings and untruncated token lengths, in input order: of the first ``max_seq_len`` tokens
        (``long_texts: truncate``), or pooled over the windows of the whole text (``chunks``)."""
        if self.cfg.long_texts == "chunks":
            return self._embed_chunked(texts)
        return embed_cached(texts, self.cache, self._encode, self.stats)

    def _encode_windows(self, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        logger.info("Encoding %d text windows not found in the cache", len(windows))
        vectors = self.encoder.embed_windows(windows, self.cfg.encode_batch_size, self.device, self.progress)
        return vectors, np.array([len(w) for w in windows], dtype=np.int64)

    def _embed_chunked(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every window of every text is cached under its token ids; a text's vector pools its windows."""
        windows, owner, lengths = split_into_windows(
            self.tokenizer, texts, self.max_seq_len, self.stride, self.cfg.max_chunks
        )
        keys = [window_hash(w) for w in windows]
        vectors, _ = embed_keyed(keys, windows, self.window_cache, self._encode_windows, self.stats)
        self.chunking.add(np.bincount(owner, minlength=len(texts)), lengths, self.max_seq_len, self.stride)
        return pool_windows(vectors, owner, len(texts), self.cfg.chunk_pooling, self.normalize), lengths

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
            "normalize": self.normalize,
            "max_seq_len": self.max_seq_len,
            "long_texts": self.cfg.long_texts,
            "chunk_stride": self.stride,
            "max_chunks": self.cfg.max_chunks,
            "chunk_pooling": self.cfg.chunk_pooling,
        }


def truncation_summary(lengths: np.ndarray, max_seq_len: int) -> dict[str, float]:
    truncated = int((lengths > max_seq_len).sum())
    return {"truncated": truncated, "total": int(len(lengths)), "fraction": truncated / max(1, len(lengths))}
