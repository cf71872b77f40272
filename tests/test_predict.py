"""bertcls predict: row count and order, probabilities, metrics, stdin/stdout, escaping, bad input."""

from __future__ import annotations

import io
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.model.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from bertcls.runtime.formulas import escape_formula


@pytest.fixture
def labelled_input(trained_model, tmp_path):
    """The trained model's test split with extra columns, an empty text and a label it never saw."""
    frame = pd.read_csv(trained_model / "data" / "test.csv", dtype=str, keep_default_na=False)
    frame.insert(0, "id", [str(i) for i in range(len(frame))])
    frame["score"] = "-3.5"
    frame.loc[1, "text"] = "   "
    frame.loc[2, "category"] = "weather"
    path = tmp_path / "input.csv"
    frame.to_csv(path, index=False)
    return path, frame


def run_predict(cli, root, *args):
    return cli("predict", "--output-root", root, "--best-model", "best_model.pt", "--verbosity", "0", *args)


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_one_row_per_input_in_order_with_probabilities(cli, trained_model, labelled_input, tmp_path):
    path, frame = labelled_input
    code, out, err = run_predict(cli, trained_model, "--data-file", path, "--output-file", tmp_path / "out.csv")
    assert code == 0, err
    result = read(tmp_path / "out.csv")
    assert list(result["id"]) == list(frame["id"])
    assert list(result.columns[:5]) == ["id", "text", "category", "source_row", "score"]  # input columns, in order
    assert list(result["score"]) == ["-3.5"] * len(frame)  # numeric columns untouched
    probs = result[[c for c in result.columns if c.startswith("prob_")]]
    assert probs.shape[1] == 5
    filled = result[result.predicted_label != ""]
    sums = filled[probs.columns].astype(float).sum(axis=1)
    assert np.allclose(sums, 1.0, atol=1e-5)
    assert result.loc[1, "predicted_label"] == "" and len(filled) == len(frame) - 1
    best = filled[probs.columns].astype(float).idxmax(axis=1).str.removeprefix("prob_")
    assert (best == filled.predicted_label).all()
    # the printed accuracy equals the one computed here (the unseen label counts as an error)
    scored = result[result.text.str.strip() != ""]
    expected = float((scored.category == scored.predicted_label).mean())
    assert f"{expected:.4f}" in out and "'weather' (1)" in out and "1 row(s) have empty text" in err


def test_bare_output_name_goes_under_predictions(cli, trained_model, labelled_input):
    path, frame = labelled_input
    code, _, _ = run_predict(cli, trained_model, "--data-file", path, "--output-file", "bare.csv")
    assert code == 0 and len(read(trained_model / "predictions" / "bare.csv")) == len(frame)


def test_top_k_columns(cli, trained_model, labelled_input, tmp_path):
    path, _ = labelled_input
    code, _, _ = run_predict(
        cli, trained_model, "--data-file", path, "--output-file", tmp_path / "k.csv", "--top-k", "2"
    )
    result = read(tmp_path / "k.csv")
    assert code == 0 and {"top1_label", "top1_prob", "top2_label", "top2_prob"} <= set(result.columns)
    assert not any(c.startswith("prob_") for c in result.columns)
    row = result.iloc[0]
    assert row.top1_label == row.predicted_label and float(row.top1_prob) >= float(row.top2_prob)


def test_stdin_to_stdout(cli, trained_model, labelled_input, monkeypatch):
    path, frame = labelled_input
    monkeypatch.setattr(sys, "stdin", io.StringIO(path.read_text()))
    code, out, err = run_predict(cli, trained_model, "--data-file", "-", "--output-file", "-")
    assert code == 0, err
    result = pd.read_csv(io.StringIO(out), dtype=str, keep_default_na=False)
    assert list(result["id"]) == list(frame["id"]) and "Predictions" in err


def test_formula_escaping_on_and_off(cli, trained_model, tmp_path):
    path = tmp_path / "f.csv"
    pd.DataFrame(
        {
            "text": ['=HYPERLINK("http://x")', "+cmd", "plain text about football"],
            "note": ["@SUM(A1)", "-12", "ok"],
            "amount": ["-5", "+3.2", "7"],
        }
    ).to_csv(path, index=False)
    run_predict(cli, trained_model, "--data-file", path, "--output-file", tmp_path / "safe.csv")
    safe = read(tmp_path / "safe.csv")
    assert list(safe.text[:2]) == ['\'=HYPERLINK("http://x")', "'+cmd"]
    assert list(safe.note) == ["'@SUM(A1)", "-12", "ok"] and list(safe.amount) == ["-5", "+3.2", "7"]
    run_predict(cli, trained_model, "--data-file", path, "--output-file", tmp_path / "raw.csv", "--no-escape-formulas")
    assert read(tmp_path / "raw.csv").text[0] == '=HYPERLINK("http://x")'
    assert [escape_formula(c) for c in ("\tx", "\rx", "1e5", "-0.5")] == ["'\tx", "'\rx", "1e5", "-0.5"]


def test_chunked_prediction_equals_one_chunk(cli, trained_model, labelled_input, tmp_path):
    path, _ = labelled_input
    run_predict(cli, trained_model, "--data-file", path, "--output-file", tmp_path / "a.csv")
    run_predict(cli, trained_model, "--data-file", path, "--output-file", tmp_path / "b.csv", "--chunk-size", "7")
    a, b = read(tmp_path / "a.csv"), read(tmp_path / "b.csv")
    assert list(a.predicted_label) == list(b.predicted_label)
    assert np.allclose(
        a.confidence.replace("", "nan").astype(float),
        b.confidence.replace("", "nan").astype(float),
        atol=1e-5,
        equal_nan=True,
    )


def bad_checkpoints(tmp_path, trained_root):
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": FORMAT, "format_version": 1, "state": {}, "meta": {"cb": np.float64}}, pickled)
    trained = load_checkpoint(trained_root / "best_trials" / "best_model.pt")
    truncated = save_checkpoint(tmp_path / "truncated.pt", trained.state, trained.meta, trained.lexical_features())
    truncated.write_bytes(truncated.read_bytes()[:300])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    newer = tmp_path / "newer.pt"
    torch.save({"format": FORMAT, "format_version": 7, "state": {}, "meta": {}}, newer)
    text = tmp_path / "text.pt"
    text.write_text("not a model")
    return {
        "pickled": pickled,
        "truncated": truncated,
        "foreign": foreign,
        "newer": newer,
        "text": text,
        "missing": tmp_path / "missing.pt",
    }


@pytest.mark.parametrize(
    "kind,message",
    [
        ("pickled", "pickled"),
        ("truncated", "corrupt"),
        ("foreign", "not a bertcls"),
        ("newer", "newer"),
        ("text", "corrupt"),
        ("missing", "does not exist"),
    ],
)
def test_bad_checkpoints_exit_2_without_output(cli, trained_model, labelled_input, tmp_path, kind, message):
    path, _ = labelled_input
    checkpoint = bad_checkpoints(tmp_path, trained_model)[kind]
    target = tmp_path / "never.csv"
    code, _, err = cli(
        "predict",
        "--output-root",
        trained_model,
        "--best-model",
        checkpoint,
        "--data-file",
        path,
        "--output-file",
        target,
        "--verbosity",
        "0",
    )
    assert code == 2 and message in err and "Traceback" not in err and not target.exists()


def test_bad_input_files_exit_2_and_keep_existing_output(cli, trained_model, tmp_path):
    target = tmp_path / "kept.csv"
    target.write_text("previous results\n")
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("body,category\nhello,sport\n")
    bad_bytes = tmp_path / "bad_bytes.csv"
    bad_bytes.write_bytes(b"text\n" + b"fine\n" * 20 + b"caf\xe9\n")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("text,category\n")
    for path, message in (
        (no_text, "no column 'text'"),
        (bad_bytes, "--encoding"),
        (tmp_path / "nope.csv", "nope.csv"),
        (header_only, "no data rows"),
    ):
        code, _, err = run_predict(cli, trained_model, "--data-file", path, "--output-file", target)
        assert code == 2 and message in err and "Traceback" not in err
        assert target.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".kept")] == []
