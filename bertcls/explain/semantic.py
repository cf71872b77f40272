"""The semantic part of an explanation: integrated gradients (Captum) over the encoder's input word embeddings,
through pooling, the windows of a long text, standardisation and the head, to the explained label's score.

The baseline keeps [CLS] and [SEP] and puts [PAD] in place of every word piece, so its attributions sum to the
score of the text minus the score of the baseline (completeness); the residual is reported."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bertcls.model.encoder import Encoder, Windowing, text_windows

Span = tuple[int, int]
SEQUENCES_PER_PASS = 32  # token windows per forward and backward pass: 32 // windows steps, at least one


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
        tokenizer = encoder.tokenizer
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, spans = encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]
        stride = windowing.stride if windowing else encoder.max_seq_len
        chunks = windowing.max_chunks if windowing else 1
        bounds = text_windows(ids, encoder.max_seq_len, stride, chunks)
        width = max(end - start for start, end in bounds) + 2
        rows = np.full((len(bounds), width), tokenizer.pad_token_id, dtype=np.int64)
        pieces = np.full((len(bounds), width), -1, dtype=np.int64)
        for row, (start, end) in enumerate(bounds):
            rows[row, : end - start + 2] = [tokenizer.cls_token_id, *ids[start:end], tokenizer.sep_token_id]
            pieces[row, 1 : end - start + 1] = np.arange(start, end)
        mask = np.zeros_like(rows)
        for row, (start, end) in enumerate(bounds):
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

    def logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """The head's logits (the model's logits without the lexical layer's)."""
        count, (windows, width) = embeds.shape[0], self.mask.shape
        flat = embeds.reshape(count * windows, width, -1)
        mask = self.mask.repeat(count, 1)
        hidden = self.encoder.transformer(inputs_embeds=flat, attention_mask=mask, return_dict=True).last_hidden_state
        vectors = self.encoder.sentence_vectors(hidden, mask).reshape(count, windows, -1)
        if self.windowing is None:
            document = vectors[:, 0]
        else:
            document = vectors.amax(dim=1) if self.windowing.pooling == "max" else vectors.mean(dim=1)
            if self.encoder.normalize:
                document = nn.functional.normalize(document, p=2, dim=1)
        return self.head(document)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.logits(embeds) @ self.mix


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
    """A text's word embeddings and its baseline's (1 x windows*width x hidden), and the head's logits at both."""

    inputs: torch.Tensor
    baseline: torch.Tensor
    logits: torch.Tensor

    @property
    def text_logits(self) -> np.ndarray:
        return self.logits[0].numpy()


def endpoints(scores: DocumentScores, windows: TokenWindows) -> Endpoints:
    scores.read(windows)
    embed = scores.encoder.transformer.get_input_embeddings()
    with torch.no_grad():
        inputs = embed(windows.ids).reshape(1, -1, embed.embedding_dim)
        baseline = embed(windows.baseline_ids(scores.encoder.tokenizer.pad_token_id)).reshape(inputs.shape)
        logits = scores.logits(torch.cat([inputs, baseline]))
    return Endpoints(inputs, baseline, logits)


def semantic_part(
    scores: DocumentScores, windows: TokenWindows, ends: Endpoints, target: int, steps: int
) -> SemanticPart:
    """Integrated gradients of one explained score over the word pieces (summed where windows overlap)."""
    from captum.attr import IntegratedGradients

    scores.read(windows)
    attribution = IntegratedGradients(scores).attribute(
        ends.inputs,
        baselines=ends.baseline,
        target=target,
        n_steps=steps,
        internal_batch_size=max(1, SEQUENCES_PER_PASS // len(windows.ids)),
    )
    per_position = attribution.sum(dim=-1).reshape(windows.ids.shape).detach().numpy()
    pieces = np.zeros(len(windows.spans), dtype=np.float64)
    inside = windows.pieces >= 0
    np.add.at(pieces, windows.pieces[inside], per_position[inside])
    mixed = ends.logits @ scores.mix
    score, base = float(mixed[0, target]), float(mixed[1, target])
    return SemanticPart(target, pieces, score, base)
