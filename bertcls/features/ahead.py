"""Token ids made ahead, in a background thread, while the caller does other work.

The tokenizer's Rust code releases the GIL, so it can run on one core while the main thread does Python work that
holds the GIL on the other: fitting TF-IDF, importing and loading the encoder. On 2 cores this hides the
tokenization of a cold ``train`` (about 0.9 s for BBC's 2,225 articles) behind work it had to wait for anyway. The
tokenizer runs single-threaded meanwhile (``TOKENIZERS_PARALLELISM``, unless the user set it), so that it does not
take the main thread's core too.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

from bertcls.model.encoder import truncated_ids

logger = logging.getLogger(__name__)
PARALLELISM = "TOKENIZERS_PARALLELISM"


MAX_TEXTS_AHEAD = 100_000  # the ids are held until the block ends (int32 arrays: about 60 MB at 128 tokens)


class TokensAhead:
    """The truncated token ids (int32 arrays) and untruncated lengths of some texts (the first
    ``MAX_TEXTS_AHEAD`` distinct ones), made in a background thread from the moment this object exists; :meth:`take`
    waits for them. :meth:`close` (or leaving the ``with`` block) waits for the thread and gives the tokenizer its
    parallelism back."""

    def __init__(self, tokenizer, texts: list[str], max_seq_len: int):
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len
        self._texts = list(dict.fromkeys(texts))[:MAX_TEXTS_AHEAD]
        self._made: dict[str, tuple[np.ndarray, int]] = {}
        self._error: BaseException | None = None
        self._owns_setting = PARALLELISM not in os.environ
        if self._owns_setting:  # set here, before the thread starts, and removed after it ends
            os.environ[PARALLELISM] = "false"
        self._thread = threading.Thread(target=self._tokenize, name="bertcls-tokens-ahead", daemon=True)
        self._thread.start()

    def _tokenize(self) -> None:
        try:
            self._made = self._tokenized(self._texts)
        except Exception as exc:  # noqa: BLE001 - handed to the main thread by take()
            self._error = exc

    def _tokenized(self, texts: list[str]) -> dict[str, tuple[np.ndarray, int]]:
        ids, lengths = truncated_ids(self.tokenizer, texts, self.max_seq_len)
        rows = zip(texts, ids, lengths.tolist(), strict=True)
        return {text: (np.asarray(row, dtype=np.int32), n) for text, row, n in rows}

    def close(self) -> None:
        self._thread.join()
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
        """The ids and lengths of ``texts`` (a block's worth), in order; texts not made ahead are tokenized now."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        now = self._tokenized([t for t in dict.fromkeys(texts) if t not in self._made])
        rows = [self._made.get(t) or now[t] for t in texts]
        return [row for row, _ in rows], np.fromiter((n for _, n in rows), dtype=np.int64, count=len(rows))
