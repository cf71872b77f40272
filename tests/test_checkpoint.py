"""Checkpoint safety: atomic writes, pickles refused, corrupt and foreign files rejected."""

from __future__ import annotations

import collections

import pytest
import torch

from bertcls.checkpoint import FORMAT, build_classifier, load_checkpoint, save_checkpoint
from bertcls.errors import CheckpointError


class Payload:
    """An arbitrary Python object, as a malicious checkpoint would carry."""


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "state": {}, "meta": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"w": torch.ones(1000)}, {"labels": []})
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


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"w": torch.ones(3)}, {"labels": ["a"]})
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, {"w": torch.ones(3)}, {"bad": collections.deque([lambda: 0])})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_changed_encoder_fingerprint_is_refused(trained_model, tmp_path):
    ckpt = load_checkpoint(trained_model / "best_trials" / "best_model.pt")
    meta = {**ckpt.meta, "encoder": {**ckpt.meta["encoder"], "fingerprint": "0" * 64}}
    path = save_checkpoint(tmp_path / "m.pt", ckpt.state, meta)
    with pytest.raises(CheckpointError, match="does not match"):
        build_classifier(load_checkpoint(path), trained_model)


def test_checkpoint_holds_the_promised_metadata(trained_model):
    meta = load_checkpoint(trained_model / "best_trials" / "best_model.pt").meta
    for key in ("config", "labels", "history", "stop_reason", "metrics", "encoder", "versions", "created_at"):
        assert key in meta
    assert len(meta["encoder"]["fingerprint"]) == 64 and meta["encoder"]["fine_tuned"] is False
    assert meta["versions"]["torch"].startswith("2.")
