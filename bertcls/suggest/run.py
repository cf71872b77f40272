"""``bertcls suggest`` without the console: score the pool with the output root's model, leave out what is already
labelled, already sent or a near-copy of a training text, and pick the texts to label next."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bertcls.config.settings import DataSection, Settings
from bertcls.data.labelled import read_labelled_csv, with_source_rows
from bertcls.evaluation.trust import near_duplicates
from bertcls.inference.scoring import checkpoint_service, score_and_embed
from bertcls.model.checkpoint import Checkpoint
from bertcls.model.encoder import pick_device
from bertcls.runtime.errors import DataError
from bertcls.runtime.layout import RunLayout
from bertcls.suggest.strategies import Selection, select

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SuggestRequest:
    pool_file: Path
    count: int
    strategy: str
    exclude_file: Path | None = None
    seed: int = 0


@dataclass(frozen=True)
class SuggestOutcome:
    """The rows to label (the pool's columns, the model's guess, the score and reason, an empty label column) and
    what was left out of the pool on the way."""

    frame: pd.DataFrame
    pool_rows: int
    empty: int
    labelled: int
    sent: int
    near_duplicates: int


def text_key(text: str) -> str:
    """Texts compare equal when they differ only in case and spacing."""
    return " ".join(text.split()).casefold()


def labelled_texts(root: Path, data: DataSection) -> list[str]:
    """The texts the model was trained, validated and tested on (``<output_root>/data/``)."""
    layout, texts = RunLayout(root), []
    for split in SPLITS:
        path = layout.split_file(split)
        if path.is_file():
            texts += read_labelled_csv(path, data, require_label=False)[data.text_column].tolist()
    return texts


def sent_texts(path: Path | None, data: DataSection) -> set[str]:
    """The texts of ``--exclude-file`` (already sent out for labelling), by key."""
    if path is None:
        return set()
    return {text_key(t) for t in read_labelled_csv(path, data, require_label=False)[data.text_column]}


def read_pool(request: SuggestRequest, data: DataSection) -> pd.DataFrame:
    pool = with_source_rows(read_labelled_csv(request.pool_file, data, require_label=False))
    if pool.empty:
        raise DataError(f"Pool file {request.pool_file} has no data rows.")
    if request.count > len(pool):
        raise DataError(
            f"--n {request.count} is more than the {len(pool):,} rows of pool file {request.pool_file}; pass a "
            "smaller --n."
        )
    return pool


def suggest(ckpt: Checkpoint, settings: Settings, request: SuggestRequest) -> SuggestOutcome:
    """The ``request.count`` pool texts to label next, best first."""
    root, trained = settings.root, ckpt.trained_settings(settings.root)
    data = trained.data.model_copy(update={"encoding": settings.data.encoding})
    pool = read_pool(request, data)
    keys = pool[data.text_column].map(text_key)
    empty = (keys == "").to_numpy()
    known = {text_key(t) for t in labelled_texts(root, data)}
    labelled = keys.isin(known).to_numpy() & ~empty
    sent = keys.isin(sent_texts(request.exclude_file, data)).to_numpy() & ~empty & ~labelled
    open_rows = pool[~(empty | labelled | sent)]
    if open_rows.empty:
        raise DataError(f"Every text of pool file {request.pool_file} is empty, already labelled or already sent.")
    service = checkpoint_service(ckpt, trained, pick_device(settings.model.device), settings.model.precision)
    batch = settings.encoder.encode_batch_size
    texts = open_rows[data.text_column].tolist()
    probs, vectors = score_and_embed(ckpt, texts, service, root, batch)
    copies = near_copies(ckpt, service, root, batch, vectors, labelled_texts(root, data), settings)
    kept = np.flatnonzero(~copies)
    if not len(kept):
        logger.warning("Every open pool text is a near-copy of a training text; suggesting among them anyway.")
        kept, copies = np.arange(len(texts)), np.zeros_like(copies)
    count = min(request.count, len(kept))
    if count < request.count:
        logger.warning("Only %d pool text(s) are left to suggest (asked for %d).", count, request.count)
    chosen = select(request.strategy, probs[kept], vectors[kept], count, ckpt.task, ckpt.rule, request.seed)
    frame = suggestions(open_rows.iloc[kept], probs[kept], chosen, ckpt, data)
    return SuggestOutcome(frame, len(pool), int(empty.sum()), int(labelled.sum()), int(sent.sum()), int(copies.sum()))


def near_copies(ckpt, service, root: Path, batch: int, vectors: np.ndarray, known: list[str], settings) -> np.ndarray:
    """Pool rows whose vector is at least ``evaluation.near_duplicate_threshold`` cosine-close to a training text's."""
    copies = np.zeros(len(vectors), dtype=bool)
    if known:
        _, known_vectors = score_and_embed(ckpt, known, service, root, batch)
        threshold = settings.evaluation.near_duplicate_threshold
        copies[np.unique(near_duplicates(known_vectors, vectors, threshold)[1])] = True
    return copies


def suggestions(rows: pd.DataFrame, probs: np.ndarray, chosen: Selection, ckpt: Checkpoint, data) -> pd.DataFrame:
    """The chosen rows with the model's current guess, the score, the reason and an empty label column to fill."""
    picked = rows.iloc[chosen.rows].reset_index(drop=True)
    guess = ckpt.task.prediction_columns(probs[chosen.rows], ckpt.labels, ckpt.rule, None, None, data.label_separator)
    guesses = guess.frame[[c for c in guess.frame.columns if not c.startswith("prob_")]]
    guesses = guesses.rename(columns=lambda c: f"model_{c}").reset_index(drop=True)
    extra = pd.DataFrame({"score": np.round(chosen.scores, 6), "reason": chosen.reasons})
    out = pd.concat([picked.drop(columns=[c for c in guesses.columns if c in picked.columns]), guesses, extra], axis=1)
    for column in data.label_columns or [data.label_column]:
        if column not in out.columns:
            out[column] = ""  # to fill in; the file then goes back to train as it is
    return out
