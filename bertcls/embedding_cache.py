"""On-disk embedding cache in safetensors shards, keyed by encoder fingerprint, length, pooling and text hash."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bertcls.fileio import atomic_path

logger = logging.getLogger(__name__)
HASH_BYTES = 16


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=HASH_BYTES).digest()


def shard_name() -> str:
    """A name no other process can pick (time, process id, random part), so writers never overwrite each other."""
    return f"shard_{time.time_ns():020d}_{os.getpid()}_{uuid.uuid4().hex[:8]}.safetensors"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class EmbeddingCache:
    """A folder of shards; each shard holds ``hashes`` (N x 16 uint8), ``embeddings`` and ``lengths``. Embeddings
    made at another precision live in another folder (fp32 keeps the plain name)."""

    def __init__(
        self, root: Path, fingerprint: str, max_seq_len: int, pooling: str, kind: str = "texts", precision: str = "fp32"
    ):
        suffix = ("" if kind == "texts" else f"_{kind}") + ("" if precision == "fp32" else f"_{precision}")
        self.folder = Path(root) / "cache" / f"{fingerprint[:16]}_len{max_seq_len}_{pooling}{suffix}"
        self._index: dict[bytes, tuple[np.ndarray, int]] | None = None

    def _load(self) -> dict[bytes, tuple[np.ndarray, int]]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.folder.glob("shard_*.safetensors")):
                tensors = load_file(str(shard))
                hashes = tensors["hashes"].numpy()
                vectors, lengths = tensors["embeddings"].numpy(), tensors["lengths"].numpy()
                for row, key in enumerate(hashes):
                    self._index[key.tobytes()] = (vectors[row], int(lengths[row]))
        return self._index

    def lookup(self, hashes: list[bytes]) -> list[tuple[np.ndarray, int] | None]:
        index = self._load()
        return [index.get(h) for h in hashes]

    def add(self, hashes: list[bytes], vectors: np.ndarray, lengths: np.ndarray) -> None:
        if not hashes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "hashes": torch.from_numpy(np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, HASH_BYTES).copy()),
            "embeddings": torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
            "lengths": torch.from_numpy(np.asarray(lengths, dtype=np.int64)),
        }
        with atomic_path(self.folder / shard_name()) as tmp:
            save_file(tensors, str(tmp))
        index = self._load()
        for key, vector, length in zip(hashes, vectors, lengths, strict=True):
            index[key] = (vector, int(length))


def window_hash(token_ids: list[int]) -> bytes:
    """The cache key of one token window (its token ids), so windows are shared between texts and runs."""
    return hashlib.blake2b(np.asarray(token_ids, dtype=np.int64).tobytes(), digest_size=HASH_BYTES).digest()


EncodeFn = Callable[[list], tuple[np.ndarray, np.ndarray]]


def embed_cached(
    texts: list[str], cache: EmbeddingCache, encode: EncodeFn, stats: CacheStats
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and untruncated token lengths for ``texts``; only unseen texts reach ``encode``."""
    return embed_keyed([text_hash(t) for t in texts], texts, cache, encode, stats)


def embed_keyed(
    hashes: list[bytes], items: list, cache: EmbeddingCache, encode: EncodeFn, stats: CacheStats
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and lengths for ``items`` (texts or token windows) under their cache keys; only the items whose key
    is not cached reach ``encode``, each distinct key once."""
    found = cache.lookup(hashes)
    missing: dict[bytes, object] = {}
    for h, item, hit in zip(hashes, items, found, strict=True):
        if hit is None:
            missing.setdefault(h, item)
    stats.hits += len(items) - sum(1 for f in found if f is None)
    stats.misses += len(missing)
    if missing:
        vectors, lengths = encode(list(missing.values()))
        cache.add(list(missing.keys()), vectors, lengths)
        found = cache.lookup(hashes)
    vectors = np.stack([f[0] for f in found]).astype(np.float32)
    lengths = np.array([f[1] for f in found], dtype=np.int64)
    return vectors, lengths
