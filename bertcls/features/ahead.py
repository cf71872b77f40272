"""Token ids made ahead, in a background thread, while the caller does other work.

The tokenizer's Rust code releases the GIL, so it can run on one core while the main thread does Python work that
holds the GIL on the other: fitting TF-IDF, importing and loading the encoder. On 2 cores this hides the
tokenization of a cold ``train`` (about 0.9 s for BBC's 2,225 articles) behind work it had to wait for anyway. On a
machine with few cores the tokenizer runs single-threaded meanwhile (``TOKENIZERS_PARALLELISM``, unless the user
set it), so that it does not take the main thread's core too.

The texts are tokenized a slice at a time: memory stays that of one slice (the untruncated tokens of long texts
are large) plus the truncated ids kept, :meth:`TokensAhead.take` waits only for the slices it needs, and
:meth:`TokensAhead.close` stops the thread within one slice (a Ctrl-C is not held up by the whole corpus).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from bertcls.model.encoder import truncated_ids

PARALLELISM = "TOKENIZERS_PARALLELISM"
MAX_TEXTS_AHEAD = 100_000  # the truncated ids are held until the block ends (int32: about 60 MB at 128 tokens)
SLICE = 256  # texts tokenized in one call (as one encoding block)
FEW_CORES = 4  # up to this many cores, the tokenizer leaves the main thread its core


class TokensAhead:
    """The truncated token ids (int32 arrays) and untruncated lengths of some texts (the first
    ``MAX_TEXTS_AHEAD`` distinct ones), made in a background thread from the moment this object exists; :meth:`take`
    waits for the ones it is asked for. :meth:`close` (or leaving the ``with`` block) stops the thread and gives the
    tokenizer its parallelism back. One at a time per process: the environment variable is process-wide (it is set
    before the thread starts and removed after it ends, never while it runs)."""

    def __init__(self, tokenizer, texts: list[str], max_seq_len: int):
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len
        self._texts = list(dict.fromkeys(texts))[:MAX_TEXTS_AHEAD]
        self._made: dict[str, tuple[np.ndarray, int]] = {}
        self._error: BaseException | None = None
        self._done = False
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._owns_setting = PARALLELISM not in os.environ and (os.cpu_count() or 1) <= FEW_CORES
        if self._owns_setting:
            os.environ[PARALLELISM] = "false"
        self._thread = threading.Thread(target=self._tokenize, name="bertcls-tokens-ahead", daemon=True)
        self._thread.start()

    def _tokenize(self) -> None:
        try:
            for start in range(0, len(self._texts), SLICE):
                if self._stop.is_set():
                    break
                made = self._tokenized(self._texts[start : start + SLICE])
                with self._changed:
                    self._made.update(made)
                    self._changed.notify_all()
        except Exception as exc:  # noqa: BLE001 - handed to the main thread by take()
            self._error = exc
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def _tokenized(self, texts: list[str]) -> dict[str, tuple[np.ndarray, int]]:
        ids, lengths = truncated_ids(self.tokenizer, texts, self.max_seq_len)
        rows = zip(texts, ids, lengths.tolist(), strict=True)
        return {text: (np.asarray(row, dtype=np.int32), n) for text, row, n in rows}

    def close(self) -> None:
        self._stop.set()
        try:
            self._thread.join()
        finally:
            if self._owns_setting:
                os.environ.pop(PARALLELISM, None)
                self._owns_setting = False

    def __len__(self) -> int:
        return len(self._texts)

    def __enter__(self) -> TokensAhead:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def take(self, texts: list[str]) -> tuple[list, np.ndarray]:
        """The ids and lengths of ``texts`` (a block's worth), in order, once the thread has made them; texts it
        does not make are tokenized now."""
        with self._changed:
            self._changed.wait_for(lambda: self._done or all(t in self._made for t in texts))
            if self._error is not None:
                raise self._error
            ready = {t: self._made[t] for t in texts if t in self._made}
        now = self._tokenized([t for t in dict.fromkeys(texts) if t not in ready])
        rows = [ready.get(t) or now[t] for t in texts]
        return [row for row, _ in rows], np.fromiter((n for _, n in rows), dtype=np.int64, count=len(rows))
