"""The semantic part of an explanation: integrated gradients (Captum) through the encoder, pooling, the windows of a
long text, standardisation and the head, to the explained label's score, over one of three paths:

- ``expected`` (the default; expected gradients, Erion et al. 2021): over each word piece's presence, which
  multiplies its weight in every attention and in the pooling, from each of a few random partial removals of the
  words (a uniform random share of them kept) to the text, averaged. A word's attribution is what it adds as it
  appears beside random others, so a word the rest of the text makes redundant still gets its part.
- ``presence``: the same presence, every word piece faded in together from removed (only [CLS] and [SEP] read, at
  their places) to the text: removal with the positions kept (the faithfulness benchmark deletes words and reads
  the text again, so the later words move up).
- ``embeddings``: each word piece's input embedding, from the [PAD] embedding (the length and the mask kept) to
  its own.

For each method the attributions sum to the score of the text minus the (mean) score of the baseline(s) (completeness);
the residual is reported."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from bertcls.explain.words import Words
from bertcls.model.encoder import Encoder, Windowing, text_windows

logger = logging.getLogger(__name__)
Span = tuple[int, int]
Method = Literal["expected", "presence", "embeddings"]
PRESENCE_METHODS: tuple[Method, ...] = ("expected", "presence")  # the methods that need presence_problem None
SEQUENCES_PER_PASS = 32  # token windows per forward and backward pass (at least one step of one path)


@dataclass(frozen=True)
class TokenWindows:
    """A text's token windows as the model reads them: ids and masks (windows x width), and for each window
    position the index of its word piece in ``spans`` (-1 for [CLS], [SEP] and padding)."""

    ids: torch.Tensor
    mask: torch.Tensor
    pieces: np.ndarray
    spans: list[Span]

    @classmethod
    def of(cls, encoder: Encoder, windowing: Windowing | None, text: str) -> TokenWindows:
        ids, spans = word_pieces(encoder, text)
        stride = windowing.stride if windowing else encoder.max_seq_len
        chunks = windowing.max_chunks if windowing else 1
        return cls.within(encoder, ids, spans, text_windows(ids, encoder.max_seq_len, stride, chunks))

    @classmethod
    def within(cls, encoder: Encoder, ids: list[int], spans: list[Span], bounds: list[Span]) -> TokenWindows:
        """The windows ``bounds`` (start and end in ``ids``), each between [CLS] and [SEP], padded to the widest."""
        tokenizer = encoder.tokenizer
        width = max(end - start for start, end in bounds) + 2
        rows = np.full((len(bounds), width), tokenizer.pad_token_id, dtype=np.int64)
        pieces = np.full((len(bounds), width), -1, dtype=np.int64)
        mask = np.zeros_like(rows)
        for row, (start, end) in enumerate(bounds):
            rows[row, : end - start + 2] = [tokenizer.cls_token_id, *ids[start:end], tokenizer.sep_token_id]
            pieces[row, 1 : end - start + 1] = np.arange(start, end)
            mask[row, : end - start + 2] = 1
        return cls(torch.from_numpy(rows), torch.from_numpy(mask), pieces, spans)

    def baseline_ids(self, pad_id: int) -> torch.Tensor:
        """The same windows with every word piece replaced by [PAD] ([CLS], [SEP] and the mask kept)."""
        return torch.where(torch.from_numpy(self.pieces >= 0), torch.full_like(self.ids, pad_id), self.ids)


class DocumentScores(nn.Module):
    """Word embeddings of a text's windows (batch x windows*width x hidden) -> the explained scores (batch x
    labels): the encoder's transformer and pooling, the windows pooled into one vector, the head, then ``mix``
    (the task's score of each label from the logits). Runs in fp32."""

    def __init__(self, encoder: Encoder, windowing: Windowing | None, head: nn.Module, mix: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.windowing = windowing
        self.head = head
        self.mix = mix
        self.mask = torch.zeros(0)

    def read(self, windows: TokenWindows) -> DocumentScores:
        self.mask = windows.mask
        return self

    def logits(self, embeds: torch.Tensor, presence: torch.Tensor | None = None) -> torch.Tensor:
        """The head's logits (the model's logits without the lexical layer's). ``presence`` (count*windows x width,
        0 to 1) replaces the 0/1 mask: a position's weight in every attention (its key's softmax weight) and in the
        mean pooling is multiplied by it, so 0 reads as the token removed."""
        count, (windows, width) = embeds.shape[0], self.mask.shape
        flat = embeds.reshape(count * windows, width, -1)
        mask = self.mask.repeat(count, 1) if presence is None else presence
        attention = mask if presence is None else additive_mask(presence)
        hidden = self.encoder.transformer(inputs_embeds=flat, attention_mask=attention, return_dict=True)
        vectors = self.encoder.sentence_vectors(hidden.last_hidden_state, mask).reshape(count, windows, -1)
        return self.head(self.pool_windows(vectors))

    def pool_windows(self, vectors: torch.Tensor) -> torch.Tensor:
        """Each text's window vectors (count x windows x hidden) -> its document vector, as the encoder pools them."""
        if self.windowing is None:
            return vectors[:, 0]
        document = vectors.amax(dim=1) if self.windowing.pooling == "max" else vectors.mean(dim=1)
        return nn.functional.normalize(document, p=2, dim=1) if self.encoder.normalize else document

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.logits(embeds) @ self.mix


def additive_mask(presence: torch.Tensor) -> torch.Tensor:
    """The attention mask (sequences x 1 x width x width) that multiplies each key's softmax weight by its presence
    (log presence added to the scores; a presence of 0 removes the key)."""
    floor = torch.finfo(presence.dtype).min
    logs = torch.where(presence > 0, presence.clamp(min=1e-30).log(), torch.full_like(presence, floor))
    width = presence.shape[1]
    return logs[:, None, None, :].expand(-1, 1, width, width)


class PresenceScores(nn.Module):
    """The integration variable u of each window position (count x windows*width) -> the explained scores, with the
    text's word embeddings fixed. A word piece's presence is u squared: the same straight path from removed to
    present, its steps closer together near removal, where the score moves fastest (on the first 40 SMS test
    texts at 32 steps, a linear presence left 30% of them with a gap over 5%). [CLS], [SEP] and padding keep the
    mask's 1 and 0."""

    def __init__(self, scores: DocumentScores, windows: TokenWindows, word_embeds: torch.Tensor):
        super().__init__()
        self.scores = scores
        self.windows = windows
        self.word_embeds = word_embeds
        self.pieces = torch.from_numpy(windows.pieces >= 0).reshape(1, -1)
        self.mask = windows.mask.reshape(1, -1).to(word_embeds.dtype)

    def presence(self, root: torch.Tensor) -> torch.Tensor:
        """Each sequence's presences (count*windows x width) at the integration variables ``root``."""
        return torch.where(self.pieces, root * root, self.mask).reshape(-1, self.windows.ids.shape[1])

    def logits(self, root: torch.Tensor) -> torch.Tensor:
        scores = self.scores.read(self.windows)
        return scores.logits(self.word_embeds.expand(root.shape[0], -1, -1), self.presence(root))

    def forward(self, root: torch.Tensor) -> torch.Tensor:
        return self.logits(root) @ self.scores.mix


@dataclass(frozen=True)
class SemanticPart:
    """Per word piece, the attribution to one label's score; the score of the text and of the baseline; the
    residual of completeness (sum of attributions - (score - baseline score)), which exact integration makes 0."""

    target: int
    pieces: np.ndarray
    score: float
    baseline: float

    @property
    def residual(self) -> float:
        return float(self.pieces.sum()) - (self.score - self.baseline)


@dataclass(frozen=True)
class Endpoints:
    """What integrated gradients run on: the function of the input (``attributed``: word embeddings or presences),
    the text's input and its baselines' (one row each, the input repeated to match), and the head's logits at the
    text (first row, from the plain model) and at each baseline."""

    attributed: nn.Module
    inputs: torch.Tensor
    baseline: torch.Tensor
    logits: torch.Tensor

    @property
    def text_logits(self) -> np.ndarray:
        return self.logits[0].numpy()


def word_embeddings(scores: DocumentScores, windows: TokenWindows, ids: torch.Tensor | None = None) -> torch.Tensor:
    """The input embeddings of the windows' ids (or of ``ids`` of the same shape), 1 x windows*width x hidden;
    ``scores`` is set to read these windows."""
    scores.read(windows)
    embed = scores.encoder.transformer.get_input_embeddings()
    return embed(windows.ids if ids is None else ids).reshape(1, -1, embed.embedding_dim)


def endpoints(
    scores: DocumentScores, windows: TokenWindows, method: Method, removals: torch.Tensor | None = None
) -> Endpoints:
    """The text and its baseline(s) for ``method`` (see :func:`presence_problem` before taking ``expected`` or
    ``presence``); ``expected`` starts from ``removals`` (see :func:`random_removals`)."""
    with torch.no_grad():
        words = word_embeddings(scores, windows)
        if method in PRESENCE_METHODS:
            present, ones = PresenceScores(scores, windows, words), torch.ones(1, windows.ids.numel())
            starts = torch.zeros_like(ones) if method == "presence" else removals
            if starts is None:
                raise ValueError("expected gradients start from random removals; pass them (random_removals)")
            text_starts = torch.cat([scores.logits(words), present.logits(starts)])
            return Endpoints(present, ones.expand(len(starts), -1), starts, text_starts)
        pad = word_embeddings(scores, windows, windows.baseline_ids(scores.encoder.tokenizer.pad_token_id))
        return Endpoints(scores, words, pad, scores.logits(torch.cat([words, pad])))


def random_removals(windows: TokenWindows, words: Words, count: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` random partial removals of the text's words, as presence roots (count x windows*width): each keeps
    a uniform random share of the words; a word piece is removed (0) when any word it covers is, kept (1) otherwise;
    [CLS], [SEP] and padding read 1 (their mask decides them)."""
    inside = windows.pieces >= 0
    read = windows.pieces[inside]  # the word pieces read, by position
    spans = np.array([windows.spans[i] for i in read], dtype=np.int64).reshape(-1, 2)
    first, last = words.covered_ranges(spans[:, 0], spans[:, 1])  # the words each piece covers
    roots = np.ones((count, windows.pieces.size), dtype=np.float32)
    for row in roots:
        removed = np.concatenate([[0], np.cumsum(rng.random(len(words)) >= rng.random())])
        row[inside.ravel()] = removed[last] == removed[first]  # no word of the piece removed
    return torch.from_numpy(roots)


def presence_problem(scores: DocumentScores) -> str | None:
    """Why this model cannot be explained by presence, or None when it can: its pooling must weigh tokens (not max
    pooling) and its transformer must add a float attention mask to its scores. Checked on two probe texts of
    different lengths (the shorter padded): fully present must give the plain model's logits, removed must give the
    model reading only [CLS] and [SEP] (its own 0/1 mask on the same windows), and a presence just short of either
    end must give nearly the same (a mask read as 0/1 jumps there)."""
    if scores.encoder.pooling == "max":
        return "its max pooling ignores a token's weight"
    try:
        windows = probe_windows(scores.encoder)
        with torch.no_grad():
            words = word_embeddings(scores, windows)
            roots = torch.tensor([[1.0], [0.0], [0.999], [0.001]]).expand(-1, windows.ids.numel())
            ends = PresenceScores(scores, windows, words).logits(roots)  # present, removed, and just short of each
            expected = torch.cat([scores.logits(words), specials_alone(scores, windows, words)])
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:  # e.g. a 4D float mask refused
        return f"its transformer does not take a float attention mask ({type(exc).__name__}: {exc})"
    if not torch.allclose(ends[:1], expected[:1], rtol=1e-4, atol=1e-4):
        return "a text fully present does not give the model's own logits"
    if not torch.allclose(ends[1:2], expected[1:], rtol=1e-4, atol=1e-4):
        return "a text with its words at presence 0 is not read as [CLS] and [SEP] alone"
    span = float((expected[0] - expected[1]).abs().max())
    if float((ends[2:] - ends[:2]).abs().max()) > 0.05 * span + 1e-4:
        return "its attention reads the presence as 0 or 1"
    return None


def word_pieces(encoder: Encoder, text: str) -> tuple[list[int], list[Span]]:
    """The text's word piece ids (no [CLS] or [SEP]) and each one's character span."""
    encoded = encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]


def probe_windows(encoder: Encoder) -> TokenWindows:
    """A probe text read as two windows of different lengths (the shorter padded), as a long text's are."""
    ids, spans = word_pieces(encoder, "a short probe text, then a longer probe text with more words in it to read")
    short = len(ids) // 3
    return TokenWindows.within(encoder, ids, spans, [(0, short), (short, len(ids))])


def specials_alone(scores: DocumentScores, windows: TokenWindows, words: torch.Tensor) -> torch.Tensor:
    """The head's logits (1 x labels) for the windows with their word pieces removed, computed the model's own way:
    the same embeddings ``words`` and positions, with a 0/1 mask that keeps only [CLS] and [SEP]."""
    keep = (torch.from_numpy(windows.pieces < 0) & (windows.mask > 0)).long()
    hidden = scores.encoder.transformer(
        inputs_embeds=words.reshape(*windows.ids.shape, -1), attention_mask=keep, return_dict=True
    ).last_hidden_state
    vectors = scores.encoder.sentence_vectors(hidden, keep.to(hidden.dtype)).reshape(1, len(windows.ids), -1)
    return scores.head(scores.pool_windows(vectors))


def semantic_part(
    scores: DocumentScores, windows: TokenWindows, ends: Endpoints, target: int, steps: int
) -> SemanticPart:
    """Integrated gradients of one explained score over the word pieces (summed where windows overlap), averaged
    over the baselines; the baseline score is their mean."""
    from captum.attr import IntegratedGradients

    scores.read(windows)
    paths_per_pass = max(1, SEQUENCES_PER_PASS // len(windows.ids))  # a pass holds steps of this many paths at most
    integrated = IntegratedGradients(ends.attributed)
    attribution = torch.cat(
        [
            integrated.attribute(
                ends.inputs[group : group + paths_per_pass],
                baselines=ends.baseline[group : group + paths_per_pass],
                target=target,
                n_steps=steps,
                internal_batch_size=paths_per_pass,
            )
            for group in range(0, len(ends.baseline), paths_per_pass)
        ]
    )
    starts = len(ends.baseline)
    per_position = attribution.reshape(starts, *windows.ids.shape, -1).sum(dim=-1).mean(dim=0).detach().numpy()
    pieces = np.zeros(len(windows.spans), dtype=np.float64)
    inside = windows.pieces >= 0
    np.add.at(pieces, windows.pieces[inside], per_position[inside])
    mixed = ends.logits @ scores.mix
    score, base = float(mixed[0, target]), float(mixed[1:, target].mean())
    return SemanticPart(target, pieces, score, base)
