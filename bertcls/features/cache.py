"""On-disk embedding cache in safetensors shards, keyed by encoder fingerprint, length, pooling and text hash.

Built for millions of texts: each shard's rows are sorted by hash when written; opening the cache reads only each
shard's hash column (16 bytes a row) and memory-maps the vectors, so a lookup is a ``numpy.searchsorted`` per shard
and reads just the rows a run needs, with no Python object per cached row."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from bertcls.runtime.fileio import write_bytes_atomic
from bertcls.runtime.layout import RunLayout

logger = logging.getLogger(__name__)
HASH_BYTES = 16
NUMPY_DTYPES = {"F32": np.float32, "I64": np.int64, "U8": np.uint8}


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=HASH_BYTES).digest()


def shard_name() -> str:
    """A name no other process can pick (time, process id, random part), so writers never overwrite each other."""
    return f"shard_{time.time_ns():020d}_{os.getpid()}_{uuid.uuid4().hex[:8]}.safetensors"


def hash_keys(hashes: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each 16-byte hash as a big-endian uint64: the sort and search key."""
    return np.ascontiguousarray(hashes[:, :8]).view(">u8").ravel().astype(np.uint64)


def as_hash_array(hashes: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, HASH_BYTES)


def mapped_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only ``numpy.memmap`` (nothing is read until it is indexed)."""
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    start = 8 + header_size
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, end = spec["data_offsets"]
        dtype = NUMPY_DTYPES[spec["dtype"]]
        shape = tuple(spec["shape"])
        if end == begin:
            out[name] = np.zeros(shape, dtype=dtype)
            continue
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
    return out


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


def _open_shard(path: Path) -> Shard | None:
    """A shard, or None (with a warning) when it is damaged: its texts are simply encoded again."""
    try:
        return Shard.open(path)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        logger.warning("Ignoring the damaged cache shard %s (%s); its texts will be encoded again.", path, exc)
        return None


@dataclass
class Shard:
    """One shard: its sorted search keys and full hashes in memory, its vectors and lengths memory-mapped."""

    keys: np.ndarray
    hashes: np.ndarray
    vectors: np.ndarray
    lengths: np.ndarray
    row_of: np.ndarray | None = None  # sorted position -> row in the file, for shards written unsorted

    @classmethod
    def open(cls, path: Path) -> Shard:
        tensors = mapped_tensors(path)
        hashes = np.array(tensors["hashes"])  # 16 bytes a row: small, and searched often
        if not len(hashes) == len(tensors["embeddings"]) == len(tensors["lengths"]):
            raise ValueError("its tensors have different row counts")
        keys = hash_keys(hashes)
        if len(keys) > 1 and (keys[1:] < keys[:-1]).any():  # a shard from before rows were sorted
            order = np.argsort(keys, kind="stable")
            return cls(keys[order], hashes[order], tensors["embeddings"], tensors["lengths"], order)
        return cls(keys, hashes, tensors["embeddings"], tensors["lengths"])

    def find(self, keys: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which queries this shard holds, their rows in the file)."""
        position = np.searchsorted(self.keys, keys)
        inside = position < len(self.keys)
        position = np.where(inside, position, 0)
        hit = inside & (self.keys[position] == keys)
        hit &= (self.hashes[position] == hashes).all(axis=1)  # the full 16 bytes, not just the key
        return hit, (self.row_of[position] if self.row_of is not None else position)


class EmbeddingCache:
    """A folder of shards; each shard holds ``hashes`` (N x 16 uint8, sorted), ``embeddings`` and ``lengths``.
    Embeddings made at another precision live in another folder (fp32 keeps the plain name)."""

    def __init__(
        self, root: Path, fingerprint: str, max_seq_len: int, pooling: str, kind: str = "texts", precision: str = "fp32"
    ):
        suffix = ("" if kind == "texts" else f"_{kind}") + ("" if precision == "fp32" else f"_{precision}")
        self.folder = RunLayout(root).cache_dir / f"{fingerprint[:16]}_len{max_seq_len}_{pooling}{suffix}"
        self._shards: list[Shard] | None = None
        self.writable = True  # False on the ranks of a torchrun launch other than rank 0

    def _load(self) -> list[Shard]:
        if self._shards is None:
            self._shards = [s for s in map(_open_shard, sorted(self.folder.glob("shard_*.safetensors"))) if s]
        return self._shards

    def __len__(self) -> int:
        return sum(len(s.keys) for s in self._load())

    def lookup_arrays(self, hashes: list[bytes]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(found mask, vectors, lengths) for ``hashes``; rows not found are zeros. Only found rows are read."""
        query = as_hash_array(hashes) if hashes else np.zeros((0, HASH_BYTES), np.uint8)
        keys = hash_keys(query)
        found = np.zeros(len(query), dtype=bool)
        vectors, lengths = None, np.zeros(len(query), dtype=np.int64)
        for shard in self._load():
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            hit, rows = shard.find(keys[todo], query[todo])
            if not hit.any():
                continue
            targets, rows = todo[hit], rows[hit]
            if vectors is None:
                vectors = np.zeros((len(query), shard.vectors.shape[1]), dtype=np.float32)
            order = np.argsort(rows)  # read the memory map in file order
            vectors[targets[order]] = shard.vectors[rows[order]]
            lengths[targets[order]] = shard.lengths[rows[order]]
            found[targets] = True
        return found, vectors, lengths

    def found(self, hashes: list[bytes]) -> np.ndarray:
        """Which of ``hashes`` are cached (their keys alone are read, not their vectors)."""
        query = as_hash_array(hashes) if hashes else np.zeros((0, HASH_BYTES), np.uint8)
        keys, found = hash_keys(query), np.zeros(len(query), dtype=bool)
        for shard in self._load():
            todo = np.flatnonzero(~found)
            found[todo[shard.find(keys[todo], query[todo])[0]]] = True
        return found

    def lookup(self, hashes: list[bytes]) -> list[tuple[np.ndarray, int] | None]:
        """Per hash, (vector, untruncated length) or None (convenient for a few rows; use lookup_arrays for many)."""
        found, vectors, lengths = self.lookup_arrays(hashes)
        if vectors is None:  # nothing found
            return [None] * len(found)
        return [(vectors[i], int(lengths[i])) if hit else None for i, hit in enumerate(found)]

    def add(self, hashes: list[bytes], vectors: np.ndarray, lengths: np.ndarray) -> None:
        """Write one new shard (rows sorted by hash); other processes' shards are never touched. A cache that is
        not ``writable`` (a torchrun rank other than 0, or a folder that cannot be written: a full disk, a
        read-only root) keeps the rows in memory only, so that its later lookups find exactly what rank 0's do."""
        if not hashes:
            return
        table = as_hash_array(hashes)
        order = np.argsort(hash_keys(table), kind="stable")
        sorted_rows = (
            np.ascontiguousarray(table[order]),
            np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order]),
            np.ascontiguousarray(np.asarray(lengths, dtype=np.int64)[order]),
        )
        if self.writable:
            names = ("hashes", "embeddings", "lengths")
            tensors = {name: torch.from_numpy(rows) for name, rows in zip(names, sorted_rows, strict=True)}
            path = self.folder / shard_name()
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(path, save(tensors))
            except OSError as exc:  # the cache is derived data: a full disk or read-only root only costs speed
                logger.warning(
                    "Cannot add to the embedding cache in %s (%s); going on without.", self.folder, exc.strerror
                )
                self.writable = False
            else:
                self._load().append(Shard.open(path))
                return
        self._load().append(Shard(hash_keys(sorted_rows[0]), *sorted_rows))


def window_hash(token_ids: list[int]) -> bytes:
    """The cache key of one token window (its token ids), so windows are shared between texts and runs."""
    return hashlib.blake2b(np.asarray(token_ids, dtype=np.int64).tobytes(), digest_size=HASH_BYTES).digest()


EncodeFn = Callable[[list], tuple[np.ndarray, np.ndarray]]


class EncodingStopped(Exception):
    """Encoding stopped between blocks because a stop was requested; holds the rows encoded so far (a prefix of
    what was asked, in order), which :func:`embed_keyed` keeps in the cache before passing this on."""

    def __init__(self, vectors: np.ndarray, lengths: np.ndarray):
        super().__init__(f"encoding stopped after {len(vectors)} items")
        self.vectors, self.lengths = vectors, lengths


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
    found, vectors, lengths = cache.lookup_arrays(hashes)
    missing: dict[bytes, int] = {}
    for position in np.flatnonzero(~found):
        missing.setdefault(hashes[position], int(position))
    stats.hits += int(found.sum())
    stats.misses += len(missing)
    if missing:
        # shortest first: batches pad less, and a stop keeps a prefix of this order
        missing = dict(sorted(missing.items(), key=lambda pair: len(items[pair[1]])))
        try:
            new_vectors, new_lengths = encode([items[p] for p in missing.values()])
        except EncodingStopped as stopped:
            cache.add(list(missing)[: len(stopped.vectors)], stopped.vectors, stopped.lengths)
            raise
        cache.add(list(missing.keys()), new_vectors, new_lengths)
        if vectors is None:
            vectors = np.zeros((len(hashes), new_vectors.shape[1]), dtype=np.float32)
        row_of = {h: i for i, h in enumerate(missing)}
        for position in np.flatnonzero(~found):
            row = row_of[hashes[position]]
            vectors[position], lengths[position] = new_vectors[row], new_lengths[row]
    if vectors is None:
        vectors = np.zeros((0, 0), dtype=np.float32)
    return vectors.astype(np.float32, copy=False), lengths
