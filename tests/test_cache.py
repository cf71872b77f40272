"""The embedding cache: sorted, memory-mapped shards; lookups after reopening; concurrent writers; old shards."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from bertcls.features.cache import CacheStats, EmbeddingCache, embed_cached, text_hash

FINGERPRINT = "0123456789abcdef" * 4


def vectors_for(texts: list[str], dim: int = 8) -> np.ndarray:
    """A deterministic vector per text (its hash bytes), so any process can check what it reads."""
    return np.stack([np.frombuffer(text_hash(t)[:dim], dtype=np.uint8).astype(np.float32) for t in texts])


def test_lookups_after_reopening_return_the_same_vectors(tmp_path):
    texts = [f"text {i}" for i in range(1000)]
    cache = EmbeddingCache(tmp_path, FINGERPRINT, 64, "mean")
    for part in (texts[:600], texts[600:]):  # two shards
        cache.add([text_hash(t) for t in part], vectors_for(part), np.arange(len(part)))
    reopened = EmbeddingCache(tmp_path, FINGERPRINT, 64, "mean")
    query = texts[::-1] + ["never cached"]
    found, vectors, lengths = reopened.lookup_arrays([text_hash(t) for t in query])
    assert found[:-1].all() and not found[-1]
    assert np.array_equal(vectors[:-1], vectors_for(texts[::-1])) and not vectors[-1].any()
    assert lengths[0] == 399 and lengths[-2] == 0 and len(reopened) == 1000
    assert isinstance(reopened._load()[0].vectors, np.memmap)  # vectors stay on disk until read


def test_embed_cached_encodes_only_what_is_missing_once(tmp_path):
    cache = EmbeddingCache(tmp_path, FINGERPRINT, 64, "mean")
    calls = []

    def encode(items):
        calls.append(list(items))
        return vectors_for(items), np.full(len(items), 7)

    stats = CacheStats()
    first, _ = embed_cached(["a", "b", "a"], cache, encode, stats)
    second, lengths = embed_cached(["b", "c", "a"], cache, encode, stats)
    assert calls == [["a", "b"], ["c"]] and stats.hits == 2 and stats.misses == 3
    assert np.array_equal(first, vectors_for(["a", "b", "a"])) and np.array_equal(second, vectors_for(["b", "c", "a"]))
    assert lengths.tolist() == [7, 7, 7]


WRITER = """
import sys, numpy as np
sys.path.insert(0, {repo!r})
from tests.test_cache import FINGERPRINT, vectors_for
from bertcls.features.cache import EmbeddingCache, text_hash
cache = EmbeddingCache({root!r}, FINGERPRINT, 64, "mean")
for start in range({first}, {first} + 500, 50):
    part = [f"text {{i}}" for i in range(start, start + 50)]
    cache.add([text_hash(t) for t in part], vectors_for(part), np.zeros(50))
"""


def test_two_processes_adding_shards_at_once_lose_nothing(tmp_path):
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER.format(repo=repo, root=str(tmp_path), first=first)])
        for first in (0, 500)
    ]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    texts = [f"text {i}" for i in range(1000)]
    found, vectors, _ = EmbeddingCache(tmp_path, FINGERPRINT, 64, "mean").lookup_arrays([text_hash(t) for t in texts])
    assert found.all() and np.array_equal(vectors, vectors_for(texts))


def test_a_shard_written_unsorted_by_an_older_version_still_reads(tmp_path):
    texts = [f"old {i}" for i in range(50)]
    folder = EmbeddingCache(tmp_path, FINGERPRINT, 64, "mean").folder
    folder.mkdir(parents=True)
    hashes = np.frombuffer(b"".join(text_hash(t) for t in texts), dtype=np.uint8).reshape(-1, 16)
    save_file(
        {
            "hashes": torch.from_numpy(hashes.copy()),
            "embeddings": torch.from_numpy(vectors_for(texts)),
            "lengths": torch.arange(50),
        },
        str(folder / "shard_00000000000000000001_1_old.safetensors"),
    )
    found, vectors, lengths = EmbeddingCache(tmp_path, FINGERPRINT, 64, "mean").lookup_arrays(
        [text_hash(t) for t in texts[::-1]]
    )
    assert (
        found.all()
        and np.array_equal(vectors, vectors_for(texts[::-1]))
        and lengths.tolist() == list(range(49, -1, -1))
    )


def test_a_read_only_cache_remembers_what_it_added_without_writing(tmp_path):
    """A torchrun rank other than 0: later lookups must find what rank 0's cache finds, but nothing is written."""
    cache = EmbeddingCache(tmp_path, FINGERPRINT, 64, "mean")
    cache.writable = False
    texts = ["x", "y"]
    cache.add([text_hash(t) for t in texts], vectors_for(texts), np.array([3, 4]))
    found, vectors, lengths = cache.lookup_arrays([text_hash("y"), text_hash("x")])
    assert found.all() and np.array_equal(vectors, vectors_for(["y", "x"])) and lengths.tolist() == [4, 3]
    assert not cache.folder.exists()
