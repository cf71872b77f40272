"""Texts to embeddings through the cache; the encoder loads only when some text is not cached."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertcls.config.settings import EncoderSection
from bertcls.features.ahead import TokensAhead
from bertcls.features.cache import (
    CacheStats,
    EmbeddingCache,
    EncodingStopped,
    embed_cached,
    embed_keyed,
    text_hash,
    window_hash,
)
from bertcls.model.encoder import (
    Encoder,
    ProgressFn,
    architecture,
    fingerprint,
    has_normalize,
    load_tokenizer,
    max_positions,
    pool_windows,
    resolve_encoder_folder,
    split_into_windows,
)
from bertcls.runtime.distributed import world
from bertcls.runtime.errors import ConfigError
from bertcls.runtime.precision import PrecisionCheck, PrecisionGuard, log_check, measure
from bertcls.runtime.verdicts import MachineVerdicts, verdict_key

logger = logging.getLogger(__name__)

ENCODE_BLOCK = 256  # texts (or windows) encoded between two looks at a stop request
BlockFn = Callable[[list, ProgressFn | None], tuple[np.ndarray, np.ndarray]]


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

    def __init__(
        self,
        cfg: EncoderSection,
        max_seq_len: int,
        output_root: Path,
        device: torch.device,
        precision: str = "fp32",
        trusted: PrecisionCheck | None = None,
    ):
        """``precision``: the one asked for (``auto`` is resolved); a reduced one is pending until
        :meth:`check_precision` (or ``trusted``, a saved model's own check) settles it."""
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.device = device
        self.root = Path(output_root)
        self.folder = resolve_encoder_folder(cfg, output_root).resolve()
        positions = max_positions(self.folder)
        if positions is not None and max_seq_len > positions:
            raise ConfigError(
                f"model.max_seq_len {max_seq_len} is longer than the encoder's {positions} token positions; set "
                f"--max-seq-len {positions} or less."
            )
        self.fingerprint = fingerprint(self.folder)
        self.guard = PrecisionGuard.start(precision, device, trusted)
        self._use(self.guard.precision)
        self.stride = cfg.stride_for(max_seq_len)
        self.normalize = has_normalize(self.folder)
        self.stats = CacheStats()
        self.chunking = ChunkReport()
        self._encoder: Encoder | None = None
        self._tokenizer = None
        self.progress: ProgressFn | None = None
        self.stop_check: Callable[[], bool] | None = None  # polled between encoding blocks (a training run's Ctrl-C)
        self.guard_source: str | None = None  # "measured" or "machine cache", once the guard has run
        self._ahead: TokensAhead | None = None  # texts being tokenized in the background (tokens_ahead)

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
            self._encoder.precision = self.precision
        return self._encoder

    @property
    def precision(self) -> str:
        return self.guard.precision

    def adopt(self, check: PrecisionCheck) -> None:
        """Settle the guard with ``check`` (this service's own, rank 0's under torchrun, or a predictor's)."""
        self.guard.decide(check)
        self._use(check.used)

    def _use(self, precision: str) -> None:
        """Run the encoder at ``precision`` from now on, with a cache of that precision's embeddings."""
        args = (self.root, self.fingerprint, self.max_seq_len, self.cfg.pooling)
        self.cache = EmbeddingCache(*args, precision=precision)
        self.window_cache = EmbeddingCache(*args, kind="windows", precision=precision)
        self.cache.writable = self.window_cache.writable = world().is_main  # under torchrun only rank 0 writes
        encoder = getattr(self, "_encoder", None)
        if encoder is not None:
            encoder.precision = precision

    def check_precision(
        self, texts: list[str], labels: np.ndarray | None = None, labeller: Labeller | None = None
    ) -> PrecisionCheck:
        """The guard: embed ``texts`` (their first ``max_seq_len`` tokens) at fp32 and at this service's reduced
        precision, compare, and fall back to fp32 when they disagree. Labels come from ``labeller`` (a trained
        model) or, before any model exists, from the nearest class mean of ``labels``. Such a verdict is remembered
        per machine (:mod:`bertcls.runtime.verdicts`: encoder, precision, tokens, pooling, processor), so a new
        output root on the same machine does not pay for it again. A guard already settled is not measured again."""
        if self.guard.verdict is not None:
            return self.guard.verdict
        machine, key = MachineVerdicts(), self.verdict_key()
        cached = machine.get(key) if labeller is None else None
        if cached is not None:
            logger.info("The precision guard's verdict for this encoder, precision and processor comes from %s "
                        "(delete it to measure again).", machine.path)  # fmt: skip
            self.guard_source = "machine cache"
            check = cached
        else:
            check = self._measure(texts, labels, labeller)
            self.guard_source = "measured"
            if labeller is None and world().is_main:
                machine.put(key, check)
        log_check(check)
        self.adopt(check)
        return check

    def verdict_key(self) -> str:
        """What the guard's verdict depends on: the encoder, the reduced precision, the tokens per window, the
        pooling and the processor."""
        return verdict_key(self.fingerprint, self.precision, self.max_seq_len, self.cfg.pooling, self.device)

    def _measure(self, texts: list[str], labels: np.ndarray | None, labeller: Labeller | None) -> PrecisionCheck:
        """Run the guard; when it passes and texts are read truncated, its reduced-precision embeddings are the ones
        training needs, so they go into the cache instead of being computed again."""
        batch = self.cfg.encode_batch_size
        check, reduced = measure(self.encoder, texts, self.precision, self.device, batch, labeller, labels)
        if check.passed and self.cfg.long_texts == "truncate":
            keys = [text_hash(t) for t in texts]
            fresh = [i for i, hit in enumerate(self.cache.lookup(keys)) if hit is None]
            if fresh:
                lengths = self.encoder.token_lengths([texts[i] for i in fresh])
                self.cache.add([keys[i] for i in fresh], reduced[fresh], lengths)
        return check

    def reload_encoder(self) -> Encoder:
        """Drop the (possibly fine-tuned) encoder and load the pretrained one again."""
        self._encoder = None
        return self.encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        logger.info("Encoding %d texts not found in the cache", len(texts))
        here = world()  # under torchrun each rank encodes every size-th text; every rank gets all of them back

        def encode_block(block: list[str], progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray]:
            return here.map_sharded(lambda part: self._embed_truncated(part, progress), block)

        return self._encode_in_blocks(texts, encode_block)

    def _embed_truncated(self, texts: list[str], progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the first ``max_seq_len`` tokens, and untruncated lengths; the ids come from
        :meth:`tokens_ahead` where it made them (the encoder loads first, while they are still being made)."""
        encoder, size = self.encoder, self.cfg.encode_batch_size
        if self._ahead is None:
            return encoder.embed_with_lengths(texts, size, self.device, progress)
        ids, lengths = self._ahead.take(texts)
        return encoder.embed_windows(ids, size, self.device, progress), lengths

    @contextlib.contextmanager
    def tokens_ahead(self, texts: list[str]) -> Iterator[None]:
        """Tokenize the ``texts`` that are not cached in a background thread (:mod:`bertcls.features.ahead`) while
        the ``with`` block does other work; encoding inside the block takes their ids from there. Texts read as
        windows (``long_texts: chunks``) are tokenized when they are encoded, as before, and so is everything under
        torchrun (each rank tokenizes only its share)."""
        fresh: list[str] = []
        if self.cfg.long_texts == "truncate" and world().size == 1 and self._ahead is None:
            found = self.cache.found([text_hash(t) for t in texts])
            fresh = [text for text, hit in zip(texts, found, strict=True) if not hit]
        if not fresh:
            yield
            return
        self._ahead = TokensAhead(self.tokenizer, fresh, self.max_seq_len)
        try:
            yield
        finally:
            ahead, self._ahead = self._ahead, None
            ahead.close()

    def _encode_in_blocks(self, items: list, encode_block: BlockFn) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``ENCODE_BLOCK`` items at a time; between blocks a requested stop raises
        :class:`EncodingStopped` with the rows done so far (so Ctrl-C during a long cold pass is prompt, and what
        was encoded is cached). Under torchrun every rank takes the stop decision together."""
        vectors, lengths = [], []
        for start in range(0, len(items), ENCODE_BLOCK):
            block = items[start : start + ENCODE_BLOCK]
            progress = None if self.progress is None else self._progress_from(start, len(items))
            block_vectors, block_lengths = encode_block(block, progress)
            vectors.append(block_vectors)
            lengths.append(block_lengths)
            if start + len(block) < len(items) and self.stop_requested():
                raise EncodingStopped(np.concatenate(vectors), np.concatenate(lengths))
        if not vectors:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate(vectors), np.concatenate(lengths)

    def _progress_from(self, offset: int, total: int) -> ProgressFn:
        report = self.progress
        assert report is not None
        return lambda done, _block_total: report(offset + done, total)

    def stop_requested(self) -> bool:
        if self.stop_check is None:
            return False
        return world().reduce_boolean_decision(self.stop_check())

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and untruncated token lengths, in input order: of the first ``max_seq_len`` tokens
        (``long_texts: truncate``), or pooled over the windows of the whole text (``chunks``)."""
        if self.cfg.long_texts == "chunks":
            return self._embed_chunked(texts)
        return embed_cached(texts, self.cache, self._encode, self.stats)

    def _encode_windows(self, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        logger.info("Encoding %d text windows not found in the cache", len(windows))

        def encode_block(block: list[list[int]], progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray]:
            size = self.cfg.encode_batch_size
            vectors = world().map_sharded(
                lambda part: self.encoder.embed_windows(part, size, self.device, progress), block
            )
            return vectors, np.array([len(w) for w in block], dtype=np.int64)

        return self._encode_in_blocks(windows, encode_block)

    def _embed_chunked(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every window of every text is cached under its token ids; a text's vector pools its windows."""
        windows, owner, lengths = split_into_windows(
            self.tokenizer, texts, self.max_seq_len, self.stride, self.cfg.max_chunks
        )
        keys = [window_hash(w) for w in windows]
        vectors, _ = embed_keyed(keys, windows, self.window_cache, self._encode_windows, self.stats)
        self.chunking.add(np.bincount(owner, minlength=len(texts)), lengths, self.max_seq_len, self.stride)
        return pool_windows(vectors, owner, len(texts), self.cfg.chunk_pooling, normalize=self.normalize), lengths

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


Labeller = Callable[[np.ndarray], np.ndarray]


def truncation_summary(lengths: np.ndarray, max_seq_len: int) -> dict[str, float]:
    truncated = int((lengths > max_seq_len).sum())
    return {"truncated": truncated, "total": int(len(lengths)), "fraction": truncated / max(1, len(lengths))}
