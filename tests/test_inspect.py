"""bertcls inspect: panels and JSON."""

from __future__ import annotations

import json

from bertcls.model.checkpoint import load_checkpoint


def test_panels_show_parameters_and_labels(cli, trained_model):
    code, out, err = cli("inspect", "--output-root", trained_model, "--model", "best_model.pt")
    assert code == 0, err
    for text in (
        "Architecture",
        "Parameters",
        "trainable",
        "frozen",
        "account, billing, feedback, shipping, technical",
        "Training history",
        "Final metrics",
        "matches",
        "all-MiniLM-L6-v2",
    ):
        assert text in out


def test_json_matches_checkpoint_metadata(cli, trained_model):
    code, out, _ = cli("inspect", "--output-root", trained_model, "--model", "best_model.pt", "--json")
    info = json.loads(out)
    meta = load_checkpoint(trained_model / "best_trials" / "best_model.pt").meta
    assert info["labels"] == meta.labels and info["history"] == [e.model_dump() for e in meta.history]
    assert info["metrics"] == meta.metrics and info["config"] == meta.settings
    fingerprint = meta.architecture.encoder.fingerprint
    assert info["encoder_fingerprint"] == {"recorded": fingerprint, "local": fingerprint, "matches": True}
    assert info["architecture"]["head"] == meta.architecture.head.layers()
    params = info["parameters"]
    head = (384 * 512 + 512) + (512 * 5 + 5)
    lexical = meta.architecture.lexical.num_features * 5 + 5
    assert params["head"] == head and params["lexical"] == lexical and params["trainable"] == head + lexical
    assert params["frozen"] == 22_713_728 and params["total"] == head + lexical + 22_713_728
    assert info["architecture"]["layers"] == 6 and info["architecture"]["head"][-1]["out"] == 5


def test_missing_model_is_exit_2(cli, trained_model):
    code, _, err = cli("inspect", "--output-root", trained_model, "--model", "nope.pt")
    assert code == 2 and "nope.pt" in err
