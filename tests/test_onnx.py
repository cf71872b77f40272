"""ONNX Runtime backend: export checks itself against torch, predict --backend onnx, a missing extra, threads."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.inference.onnx_backend import ExportError, OnnxPredictor, check_export
from bertcls.inference.prediction import Predictor
from bertcls.model.checkpoint import load_named_checkpoint
from bertcls.runtime.layout import RunLayout
from tests.conftest import thread_subset


@pytest.fixture(scope="module")
def fp32_export(trained_model):
    from bertcls.cli.app import run

    assert run(["export", "--output-root", str(trained_model), "--format", "onnx", "--verbosity", "0"]) == 0
    return RunLayout(trained_model).export_dir


def torch_probs(root, texts):
    return Predictor(load_named_checkpoint(None, root), root, torch.device("cpu"), "fp32").predict_proba(texts, 16)


@pytest.mark.slow
def test_fp32_export_matches_torch_probabilities(trained_model, fp32_export):
    manifest = OnnxPredictor(fp32_export).manifest
    card = (fp32_export / "MODEL_CARD.md").read_text()
    assert card.startswith("---\n") and "## Model description" in card and "## Training data" in card
    assert not manifest.int8 and manifest.checks["max_prob_diff"] <= 1e-4 and manifest.checks["texts"] > 0
    assert manifest.lexical is not None  # the model's TF-IDF features travel with the export
    texts = thread_subset(6, seed=7).text.tolist()
    onnx_probs = OnnxPredictor(fp32_export, threads=1).predict_proba(texts, 8)
    assert np.abs(onnx_probs - torch_probs(trained_model, texts)).max() <= 1e-4


@pytest.mark.slow
def test_predict_backend_onnx_writes_the_same_labels_as_torch(trained_model, fp32_export, threads_small, cli):
    code, _, err = cli(
        "predict", "--output-root", trained_model, "--data-file", threads_small, "--backend", "onnx",
        "--output-file", "onnx.csv",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        "predict", "--output-root", trained_model, "--data-file", threads_small, "--precision", "fp32",
        "--output-file", "torch.csv",
    )  # fmt: skip
    assert code == 0, err
    onnx = pd.read_csv(trained_model / "predictions" / "onnx.csv")
    torch_out = pd.read_csv(trained_model / "predictions" / "torch.csv")
    assert list(onnx.columns) == list(torch_out.columns)
    assert (onnx.predicted_label == torch_out.predicted_label).all()
    assert np.allclose(onnx.confidence, torch_out.confidence, atol=1e-4)


@pytest.mark.slow
def test_int8_export_is_checked_and_kept_only_when_it_agrees(trained_model, fp32_export, cli, tmp_path):
    code, out, err = cli("export", "--output-root", trained_model, "--int8", "--verbosity", "0")
    assert code == 0, err
    manifest = OnnxPredictor(RunLayout(trained_model).export_dir).manifest
    assert manifest.int8 and manifest.encoder_file == "encoder.int8.onnx"
    assert manifest.checks["label_agreement"] >= 0.99
    assert manifest.checks["macro_f1_torch"] - manifest.checks["macro_f1_onnx"] <= 0.005
    # the check itself: torch probabilities the export cannot match make it fail with one sentence
    texts = thread_subset(4, seed=8).text.tolist()
    probs = torch_probs(trained_model, texts)
    wrong = np.roll(probs, 1, axis=1)
    ckpt = load_named_checkpoint(None, trained_model)
    truth = probs.argmax(1)
    with pytest.raises(ExportError, match="agrees with torch on"):
        check_export(RunLayout(trained_model).export_dir, wrong, texts, truth, ckpt.task, ckpt.rule, int8=True)
    with pytest.raises(ExportError, match="differs from torch"):
        check_export(RunLayout(trained_model).export_dir, wrong, texts, truth, ckpt.task, ckpt.rule, int8=False)


def test_export_without_check_data_fails_cleanly_and_keeps_the_old_export(trained_model, fp32_export, cli, tmp_path):
    before = sorted(p.name for p in fp32_export.iterdir())
    code, _, err = cli("export", "--output-root", trained_model, "--data-file", tmp_path / "missing.csv")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert sorted(p.name for p in fp32_export.iterdir()) == before


def test_onnx_threads_are_applied(fp32_export):
    predictor = OnnxPredictor(fp32_export, threads=1)
    assert predictor.encoder.get_session_options().intra_op_num_threads == 1


def test_backend_onnx_without_the_extra_is_one_sentence(trained_model, threads_small, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", threads_small, "--backend", "onnx")
    assert code == 2
    assert "pip install -e '.[onnx]'" in " ".join(err.split()) and "Traceback" not in err


@pytest.mark.slow
def test_export_records_both_backends_speed_and_backend_auto_goes_by_it(trained_model, fp32_export, threads_small, cli):
    from bertcls.runtime.verdicts import processor_model

    manifest_path = fp32_export / "export.json"
    original = manifest_path.read_text()
    manifest = OnnxPredictor(fp32_export).manifest
    speed = manifest.speed
    assert speed is not None and speed.machine == processor_model(torch.device("cpu"))
    assert speed.torch_texts_per_s > 0 and speed.onnx_texts_per_s > 0
    picks = {}
    try:
        for name, change in {
            "onnx faster": {"onnx_texts_per_s": speed.torch_texts_per_s * 2},
            "torch faster": {"onnx_texts_per_s": speed.torch_texts_per_s / 2},
            "elsewhere": {"onnx_texts_per_s": speed.torch_texts_per_s * 2, "machine": "cpu:another machine"},
        }.items():
            edited = manifest.model_copy(update={"speed": speed.model_copy(update=change)})
            manifest_path.write_text(edited.model_dump_json(indent=2))
            code, _, err = cli("predict", "--output-root", trained_model, "--data-file", threads_small,
                               "--backend", "auto", "--output-file", "auto.csv", "-v", "0")  # fmt: skip
            assert code == 0, err
            picks[name] = " ".join(err.split())
            code, out, _ = cli("inspect", "--output-root", trained_model, "--json")
            assert code == 0 and json.loads(out)["export"]["auto_backend"] in picks[name]
    finally:
        manifest_path.write_text(original)
    assert "Backend: onnx (measured at export: ONNX 2.00x torch" in picks["onnx faster"]
    assert "Backend: torch (measured at export: ONNX 0.50x torch" in picks["torch faster"]
    assert "Backend: torch (the export's speed was measured on another machine)" in picks["elsewhere"]
