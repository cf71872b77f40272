"""Checkpoints: typed metadata, the architecture record, format 1 compatibility, safety and atomic writes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bertcls.inference.prediction import Predictor
from bertcls.model.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointMeta,
    build_classifier,
    load_checkpoint,
    save_checkpoint,
)
from bertcls.runtime.errors import CheckpointError

DATA = Path(__file__).resolve().parent / "data"


def saved_meta(trained_model) -> CheckpointMeta:
    """The trained model's metadata without its lexical record (for files whose weights are stand-ins)."""
    meta = load_checkpoint(trained_model / "best_trials" / "best_model.pt").meta
    return meta.model_copy(update={"architecture": meta.architecture.model_copy(update={"lexical": None})})


class Payload:
    """An arbitrary Python object, as a malicious checkpoint would carry."""


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "state": {}, "meta": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path, trained_model):
    path = save_checkpoint(tmp_path / "m.pt", {"w": torch.ones(1000)}, saved_meta(trained_model))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_foreign_and_newer_files_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="not a bertcls checkpoint"):
        load_checkpoint(other)
    newer = tmp_path / "newer.pt"
    torch.save({"format": FORMAT, "format_version": 99, "state": {}, "meta": {}}, newer)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(newer)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, trained_model):
    meta = saved_meta(trained_model)
    path = save_checkpoint(tmp_path / "m.pt", {"w": torch.ones(3)}, meta)
    before = path.read_bytes()
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        save_checkpoint(path, {"w": lambda: 0}, meta)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_changed_encoder_fingerprint_is_refused(trained_model, tmp_path):
    ckpt = load_checkpoint(trained_model / "best_trials" / "best_model.pt")
    arch = ckpt.meta.architecture
    encoder = arch.encoder.model_copy(update={"fingerprint": "0" * 64})
    meta = ckpt.meta.model_copy(update={"architecture": arch.model_copy(update={"encoder": encoder})})
    path = save_checkpoint(tmp_path / "m.pt", ckpt.state, meta, ckpt.lexical_features())
    with pytest.raises(CheckpointError, match="does not match"):
        build_classifier(load_checkpoint(path), trained_model)


def test_checkpoint_holds_the_promised_metadata(trained_model):
    meta = saved_meta(trained_model)
    assert meta.format_version == FORMAT_VERSION == 3
    assert meta.labels and meta.history and meta.stop_reason and meta.metrics["test"]["f1"] > 0
    assert len(meta.architecture.encoder.fingerprint) == 64 and meta.architecture.encoder.fine_tuned is False
    assert meta.architecture.head.hidden_dims == meta.settings["classifier"]["hidden_dims"]
    assert meta.architecture.head.num_classes == len(meta.labels) and meta.architecture.head.in_dim == 384
    assert meta.versions["torch"].startswith("2.") and meta.tuning is None


def test_the_loader_builds_from_the_architecture_record_not_the_settings(trained_model, tmp_path):
    """Settings that disagree with the weights (as PBT once wrote) cannot mislead the loader."""
    ckpt = load_checkpoint(trained_model / "best_trials" / "best_model.pt")
    wrong = {
        **ckpt.meta.settings,
        "classifier": {**ckpt.meta.settings["classifier"], "hidden_dims": [412, 220, 118], "activation": "tanh"},
    }
    meta = ckpt.meta.model_copy(update={"settings": wrong})
    path = save_checkpoint(tmp_path / "m.pt", ckpt.state, meta, ckpt.lexical_features())
    model, _ = build_classifier(load_checkpoint(path), trained_model, need_encoder=False)
    assert [m.out_features for m in model.head.net if isinstance(m, torch.nn.Linear)][
        :-1
    ] == ckpt.meta.architecture.head.hidden_dims
    assert not any(isinstance(m, torch.nn.Tanh) for m in model.head.modules())


def test_weights_that_do_not_fit_the_record_are_one_clear_error(trained_model, tmp_path):
    ckpt = load_checkpoint(trained_model / "best_trials" / "best_model.pt")
    arch = ckpt.meta.architecture
    other = arch.model_copy(update={"head": arch.head.model_copy(update={"hidden_dims": [412, 220, 118]})})
    meta = ckpt.meta.model_copy(update={"architecture": other})
    path = save_checkpoint(tmp_path / "m.pt", ckpt.state, meta, ckpt.lexical_features())
    with pytest.raises(CheckpointError, match="do not fit the architecture") as info:
        build_classifier(load_checkpoint(path), trained_model, need_encoder=False)
    assert "\n" not in str(info.value)


def test_invalid_metadata_is_refused(tmp_path, trained_model):
    meta = load_checkpoint(trained_model / "best_trials" / "best_model.pt").meta.model_dump(mode="json")
    meta["architecture"]["head"]["activation"] = "sigmoidish"
    path = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "format_version": 2, "state": {}, "meta": meta}, path)
    with pytest.raises(CheckpointError, match="invalid metadata"):
        load_checkpoint(path)


def test_a_format_1_checkpoint_still_loads_and_predicts_the_same(tmp_path):
    """tests/data/checkpoint_v1.pt was written by bertcls before format 2 (a [16] tanh head on 5 BBC classes)."""
    ckpt = load_checkpoint(DATA / "checkpoint_v1.pt")
    expected = json.loads((DATA / "checkpoint_v1_expected.json").read_text())
    assert ckpt.meta.format_version == 1 and ckpt.labels == expected["labels"]
    assert ckpt.architecture.head.hidden_dims == [16] and ckpt.architecture.head.activation == "tanh"
    assert ckpt.meta.history[0].epoch == 1 and ckpt.architecture.encoder.max_seq_len == 32
    probs = Predictor(ckpt, tmp_path, torch.device("cpu")).predict_proba(expected["texts"], 8)
    assert np.allclose(probs, np.array(expected["probs"]), atol=1e-5)
