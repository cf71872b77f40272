"""What a saved model is: one plain dict that the CLI renders as panels or prints as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import safe_open

from bertcls.model.checkpoint import Checkpoint, encoder_folder_for, verify_encoder
from bertcls.model.encoder import weights_file
from bertcls.runtime.precision import describe as describe_precision
from bertcls.task.calibration import describe as describe_calibration


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def encoder_parameter_count(folder: Path) -> int | None:
    """Parameters in the encoder's safetensors file, read from its header (no weights loaded)."""
    try:
        path = weights_file(folder)
    except Exception:  # noqa: BLE001 - a missing encoder is reported elsewhere
        return None
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as handle:
        return sum(_numel(handle.get_slice(name).get_shape()) for name in handle.keys())  # noqa: SIM118 - a safetensors handle is not iterable


def parameter_counts(ckpt: Checkpoint, folder: Path) -> dict[str, int | None]:
    """Total, trainable and frozen parameters of the full model (encoder included); the head's and the lexical
    layer's (the standardisation statistics are buffers, not parameters)."""
    head = sum(t.numel() for k, t in ckpt.state.items() if k.startswith("head.") and not k.startswith("head.scale."))
    lexical = sum(t.numel() for k, t in ckpt.state.items() if k.startswith("lexical."))
    if ckpt.fine_tuned:
        recorded = ckpt.meta.parameters
        return {
            "total": recorded.get("total"),
            "trainable": recorded.get("trainable"),
            "frozen": recorded.get("frozen"),
            "head": head,
            "lexical": lexical,
        }
    encoder = encoder_parameter_count(folder)
    total = head + lexical + encoder if encoder is not None else None
    return {"total": total, "trainable": head + lexical, "frozen": encoder, "head": head, "lexical": lexical}


def _lexical_summary(spec) -> str:
    if spec is None:
        return "none"
    chars = f" + {spec.num_char_features:,} character {spec.char_ngrams}-grams" if spec.num_char_features else ""
    return f"TF-IDF: {spec.num_word_features:,} word {tuple(spec.word_ngrams)}-grams{chars}, linear layer on the logits"


def describe_checkpoint(ckpt: Checkpoint, output_root: str | Path) -> dict[str, Any]:
    """Everything about a checkpoint; the architecture is the record the loader builds from."""
    meta, arch = ckpt.meta, ckpt.architecture
    folder = encoder_folder_for(arch.encoder, output_root)
    matches, actual = verify_encoder(arch.encoder, folder)
    encoder, thresholds = arch.encoder, ckpt.rule.thresholds
    return {
        "file": {
            "path": str(ckpt.path),
            "size_bytes": ckpt.path.stat().st_size,
            "created_at": meta.created_at,
            "format_version": meta.format_version,
        },
        "architecture": {
            "task": ckpt.task.describe(ckpt.min_labels),
            "encoder": encoder.name_or_path,
            "encoder_folder": str(folder),
            "model_type": encoder.model_type,
            "layers": encoder.num_layers,
            "hidden_size": encoder.dim,
            "pooling": encoder.pooling,
            "normalize": encoder.normalize,
            "max_seq_len": encoder.max_seq_len,
            "fine_tuned": encoder.fine_tuned,
            "long_texts": encoder.long_texts
            if encoder.long_texts == "truncate"
            else f"chunks (windows every {encoder.chunk_stride} tokens, at most {encoder.max_chunks}, "
            f"{encoder.chunk_pooling} pooled)",
            "lexical_features": _lexical_summary(arch.lexical),
            "precision": describe_precision(meta.precision),
            "calibration": describe_calibration(meta.calibration),
            "head": arch.head.layers(),
        },
        "parameters": parameter_counts(ckpt, folder),
        "labels": ckpt.labels,
        "thresholds": None if thresholds is None else dict(zip(ckpt.labels, thresholds, strict=True)),
        "config": meta.settings,
        "history": [entry.model_dump() for entry in meta.history],
        "best_epoch": meta.best_epoch,
        "stop_reason": meta.stop_reason,
        "metrics": meta.metrics,
        "encoder_fingerprint": {
            "recorded": encoder.fingerprint,
            "local": actual if actual != "missing" else None,
            "matches": matches,
        },
        "versions": meta.versions,
        "tuning": meta.tuning.model_dump() if meta.tuning else None,
        "tracking": meta.tracking.model_dump(exclude_none=True) if meta.tracking else None,
        "data": meta.data.model_dump(),
    }
