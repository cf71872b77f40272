"""What a saved model is: one plain dict that the CLI renders as panels or prints as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import safe_open

from bertcls.checkpoint import Checkpoint, encoder_folder_for, verify_encoder
from bertcls.encoder import weights_file


def head_layers(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The MLP head as a list of layers, from the checkpoint's classifier config."""
    cfg = meta["config"]["classifier"]
    layers, width = [], meta["encoder"]["dim"]
    for hidden in cfg["hidden_dims"]:
        layers.append({"in": width, "out": hidden, "activation": cfg["activation"], "dropout": cfg["dropout_rate"]})
        width = hidden
    layers.append({"in": width, "out": len(meta["labels"]), "activation": None, "dropout": None})
    return layers


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
        return sum(_numel(handle.get_slice(name).get_shape()) for name in handle.keys())


def parameter_counts(ckpt: Checkpoint, folder: Path) -> dict[str, int | None]:
    """Total, trainable and frozen parameters of the full model (encoder included)."""
    head = sum(t.numel() for k, t in ckpt.state.items() if k.startswith("head."))
    if ckpt.fine_tuned:
        recorded = ckpt.meta.get("parameters", {})
        return {"total": recorded.get("total"), "trainable": recorded.get("trainable"),
                "frozen": recorded.get("frozen"), "head": head}
    encoder = encoder_parameter_count(folder)
    total = head + encoder if encoder is not None else None
    return {"total": total, "trainable": head, "frozen": encoder, "head": head}


def describe_checkpoint(ckpt: Checkpoint, output_root: str | Path) -> dict[str, Any]:
    meta = ckpt.meta
    folder = encoder_folder_for(meta, output_root)
    matches, actual = verify_encoder(meta, folder)
    encoder = meta["encoder"]
    return {
        "file": {"path": str(ckpt.path), "size_bytes": ckpt.path.stat().st_size, "created_at": meta["created_at"]},
        "architecture": {
            "encoder": encoder["name_or_path"],
            "encoder_folder": str(folder),
            "model_type": encoder.get("model_type"),
            "layers": encoder.get("num_layers"),
            "hidden_size": encoder["dim"],
            "pooling": encoder["pooling"],
            "normalize": encoder.get("normalize"),
            "max_seq_len": encoder["max_seq_len"],
            "fine_tuned": encoder["fine_tuned"],
            "head": head_layers(meta),
        },
        "parameters": parameter_counts(ckpt, folder),
        "labels": ckpt.labels,
        "config": meta["config"],
        "history": meta["history"],
        "best_epoch": meta.get("best_epoch"),
        "stop_reason": meta["stop_reason"],
        "metrics": meta["metrics"],
        "encoder_fingerprint": {
            "recorded": encoder["fingerprint"],
            "local": actual if actual != "missing" else None,
            "matches": matches,
        },
        "versions": meta["versions"],
        "extra": meta.get("extra", {}),
    }
