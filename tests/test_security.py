"""Unkind inputs, second round (issue 21): names that are paths, secrets in query strings and joined paths,
spreadsheet formulas from label names and headers, and YAML alias bombs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bertcls.evaluation.results import ResultWriter
from bertcls.inference.prediction import PredictOptions, predict_csv
from bertcls.runtime.formulas import escape_table
from bertcls.runtime.redaction import redact
from bertcls.task import DecisionRule, MultiLabel, SingleLabel

SECRET = "s3cretPW"


@pytest.mark.parametrize("name", ["../../evil_study", "/tmp/evil_study", "a/b", "..", ".hidden", "", "x" * 101])
def test_a_study_name_is_a_name_not_a_path(cli, tmp_path, name):
    root = tmp_path / "roots" / "S11"
    code, _, err = cli("optimize", "--output-root", root, "--study-name", name, "--data-file", "missing.csv")
    assert code == 2 and "study_name" in err and "Traceback" not in err
    assert not (tmp_path / "roots" / "evil_study").exists() and not Path("/tmp/evil_study.db").exists()
    assert not root.exists() or not any(root.rglob("*.db"))


@pytest.mark.parametrize(
    "text",
    [
        f"Cannot open the Optuna storage postgresql://127.0.0.1:1/db?user=u&password={SECRET}: refused",
        f"postgresql://h/db?sslpassword={SECRET}&application_name=x",
        f"mysql://h/db?user=u;PWD={SECRET}",
        f"https://api.example/v1?token={SECRET}#top",
        f"Data file {SECRET!r} ... /root/run/data/postgresql:/u:{SECRET}@127.0.0.1:1 was not found",
    ],
)
def test_secrets_in_query_strings_and_joined_paths_are_masked(text):
    masked = redact(text)
    assert SECRET not in masked.replace(repr(SECRET), "") and "***" in masked


def test_harmless_urls_and_parameters_stay_as_they_are():
    for text in ("sqlite:///runs/study.db", "https://h/x?monkey=1&page=2", "C:/Users/me/data.csv", "a@b.example"):
        assert redact(text) == text


def test_a_password_in_a_data_file_url_never_reaches_the_output(cli, tmp_path):
    url = f"postgresql://u:{SECRET}@127.0.0.1:1/db"
    code, out, err = cli("train", "--output-root", tmp_path / "out", "--data-file", url)
    assert code == 2 and SECRET not in out + err and "***" in err


def test_every_text_cell_and_header_is_escaped_and_numbers_are_not():
    frame = pd.DataFrame(
        {"=evil_header()": ['=HYPERLINK("http://evil.example","x")', "plain", "-5"], "p": [0.1, -0.2, 3]}
    )
    escaped = escape_table(frame)
    assert list(escaped.columns) == ["'=evil_header()", "p"]
    assert escaped.iloc[:, 0].tolist() == ['\'=HYPERLINK("http://evil.example","x")', "plain", "-5"]
    assert escaped.p.tolist() == [0.1, -0.2, 3]
    assert list(frame.columns)[0] == "=evil_header()"  # the input frame is left alone


class FixedPredictor:
    """A model's outputs without a model: what predict_csv writes is under test here, not how probabilities are
    made (the commands' own tests cover that)."""

    def __init__(self, labels: list[str], task, probs: np.ndarray):
        self.labels, self.task, self.rule, self.probs = labels, task, DecisionRule(), probs

    def predict_proba(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.probs[: len(texts)]


EVIL = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "@SUM(1+1)"]


@pytest.mark.parametrize("task", [SingleLabel(), MultiLabel()])
def test_label_names_that_are_formulas_are_escaped_in_predictions(tmp_path, task):
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b"], "=evil_header()": ["-cmd", "ok"]}).to_csv(source, index=False)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    target = tmp_path / "out.csv"
    predict_csv(FixedPredictor(EVIL, task, probs), str(source), str(target), PredictOptions(top_k=2))
    frame = pd.read_csv(target, dtype=str, keep_default_na=False)
    cells = frame.to_numpy().ravel().tolist() + list(frame.columns)
    assert not [cell for cell in cells if cell.startswith(("=", "+", "@", "-"))]
    given = [cell for column in ("predicted_label", "predicted_labels", "top1_label", "top2_label") if column in frame
             for cell in frame[column]]  # fmt: skip
    assert {f"'{EVIL[0]}", f"'{EVIL[2]}"} <= set(given)
    assert "'=evil_header()" in frame.columns and "'-cmd" in frame["'=evil_header()"].tolist()


def test_evaluation_tables_escape_label_cells_and_headers(tmp_path):
    writer = ResultWriter(tmp_path)
    writer.csv("confusion_matrix.csv", pd.DataFrame([[1, 0], [0, 2]], index=EVIL[:2], columns=EVIL[:2]), index=True)
    writer.commit()
    frame = pd.read_csv(tmp_path / "evaluation_results" / "confusion_matrix.csv", dtype=str, keep_default_na=False)
    cells = frame.to_numpy().ravel().tolist() + list(frame.columns)
    assert not any(c.startswith(("=", "+", "@")) for c in cells) and f"'{EVIL[0]}" in cells


def test_a_yaml_alias_bomb_is_refused_in_one_sentence(cli, tmp_path):
    lines = ['x-a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"x-{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    lines += ["model:", "  seed: *i"]
    bomb = tmp_path / "alias_bomb.yml"
    bomb.write_text("\n".join(lines) + "\n")
    code, _, err = cli("config", "validate", "--config", bomb)
    assert code == 2 and "expands to more than 100,000 values" in err and "Traceback" not in err
    small = tmp_path / "anchors.yml"
    small.write_text("x-common: &common {hidden_dims: [64]}\nclassifier: *common\n")
    code, _, err = cli("config", "validate", "--config", small)
    assert code == 0, err


# --- bad numbers, files and lock records: one sentence, exit 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--seed", "-1"], "seed"),
        (["--seed", "18446744073709551616"], "seed"),
        (["--lr", "inf"], "lr"),
        (["--lr", "nan"], "lr"),
    ],
)
def test_numbers_outside_what_training_takes_are_refused(cli, tmp_path, flags, named):
    code, _, err = cli("train", "--output-root", tmp_path, "--data-file", "missing.csv", *flags)
    assert code == 2 and named in err and "Traceback" not in err


@pytest.mark.parametrize("size", ["0", "-1"])
def test_predict_refuses_a_batch_size_below_one(cli, tmp_path, size):
    code, _, err = cli("predict", "--output-root", tmp_path, "--data-file", "in.csv", "--batch-size", size)
    assert code == 2 and "encode_batch_size" in err and "Traceback" not in err


def test_a_device_or_directory_is_not_read_as_data(cli, tmp_path):
    code, _, err = cli("train", "--output-root", tmp_path, "--data-file", "/dev/zero")
    assert code == 2 and "not a regular file" in err
    code, _, err = cli("train", "--output-root", tmp_path, "--data-file", tmp_path)
    assert code == 2 and "is a folder, not a file" in err


def test_predict_keeps_every_input_column_and_never_overwrites_its_input(cli, trained_model, tmp_path):
    clash = tmp_path / "clash.csv"
    pd.DataFrame({"text": ["a refund please"], "confidence": ["high"], "predicted_label": ["x"]}).to_csv(clash)
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", clash, "--output-file", "o.csv")
    assert code == 2 and "'predicted_label'" in err and "'confidence'" in err and "rename" in err
    data = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a refund please"]}).to_csv(data, index=False)
    before = data.read_bytes()
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", data, "--output-file", data)
    assert code == 2 and "is the input file" in err and data.read_bytes() == before
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", tmp_path)
    assert code == 2 and "is a folder, not a file" in err


@pytest.mark.parametrize("value", ["inf", "3.7", "1e300", "nan", "-4"])
def test_exclude_rows_line_numbers_must_be_whole_numbers(tmp_path, value):
    from bertcls.data.labelled import read_row_list
    from bertcls.runtime.errors import DataError

    path = tmp_path / "issues.csv"
    pd.DataFrame({"source_row": ["5", value]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=f"source_row value '{value}'"):
        read_row_list(path)


@pytest.mark.parametrize("content", ['{"pid": "abc", "host": "h"}', "[1, 2]", '{"pid": 99999999999999999999}', None])
def test_a_lock_that_is_not_a_process_record_is_named(tmp_path, content):
    from bertcls.runtime.errors import DataError
    from bertcls.runtime.layout import RunLayout
    from bertcls.runtime.locking import root_lock

    lock = RunLayout(tmp_path).lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        lock.mkdir()
    else:
        lock.write_text(content)
    with pytest.raises(DataError, match=str(lock)), root_lock(tmp_path, "train"):
        pass


# --- the encoder, the cache and the input's bytes ----------------------------------------------------------------


def test_max_seq_len_beyond_the_encoders_positions_is_one_sentence(cli, workspace, threads_small):
    code, _, err = cli("train", "--output-root", workspace, "--data-file", threads_small, "--max-seq-len", "1024")
    assert code == 2 and "512 token positions" in err and "--max-seq-len 512" in err


def test_an_encoder_folder_with_a_damaged_config_is_one_sentence(cli, workspace, threads_small, tmp_path):
    import shutil

    from bertcls.model.encoder import export_default_encoder

    folder = tmp_path / "encoder"
    shutil.copytree(export_default_encoder(workspace), folder)
    (folder / "config.json").write_text('{"hidden_size": 384,')  # cut off mid-write
    code, _, err = cli("train", "--output-root", workspace, "--data-file", threads_small, "--encoder", folder)
    assert code == 2 and "unreadable config.json" in err and "Traceback" not in err


def test_a_damaged_cache_shard_is_ignored_with_a_warning(tmp_path, caplog):
    from bertcls.features.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "f" * 64, 128, "mean")
    keys = [bytes([i]) * 16 for i in range(3)]
    cache.add(keys, np.ones((3, 4), dtype=np.float32), np.array([5, 6, 7]))
    shard = next(cache.folder.glob("shard_*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    fresh = EmbeddingCache(tmp_path, "f" * 64, 128, "mean")
    with caplog.at_level("WARNING"):
        assert fresh.lookup(keys) == [None, None, None]
    assert any("damaged cache shard" in r.getMessage() for r in caplog.records)


def test_nul_bytes_in_predicts_input_are_removed_with_a_warning(tmp_path, caplog):
    source = tmp_path / "in.csv"
    source.write_bytes(b"text,note\nhel\x00lo,a\x00b\nworld,c\n")
    target = tmp_path / "out.csv"
    probs = np.array([[0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    with caplog.at_level("WARNING"):
        predict_csv(FixedPredictor(["a", "b"], SingleLabel(), probs), str(source), str(target), PredictOptions())
    assert b"\x00" not in target.read_bytes()
    assert pd.read_csv(target).text.tolist() == ["hello", "world"]
    assert any("2 cell(s)" in r.getMessage() and "NUL" in r.getMessage() for r in caplog.records)


# --- silent results and faults -----------------------------------------------------------------------------------


def test_a_loss_that_stops_being_a_number_stops_training_in_one_sentence():
    import torch

    from bertcls.config.settings import (
        ClassifierSection,
        EarlyStoppingSection,
        MemorySection,
        ModelSection,
        OptimizerSection,
    )
    from bertcls.inference.batches import EmbeddingBatches
    from bertcls.model.network import HeadSpec, MLPHead, TextClassifier
    from bertcls.runtime.errors import TrainingDiverged
    from bertcls.runtime.memory import MemoryManager
    from bertcls.training.trainer import Trainer, TrainingPlan

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 2, size=40)
    x[3] = np.inf  # what a learning rate of 1e30 does to the weights after a step or two
    spec = HeadSpec.from_config(ClassifierSection(bert_hidden_size=8, hidden_dims=[8]), 8, 2, SingleLabel())
    plan = TrainingPlan(ModelSection(num_epochs=3, batch_size=8), OptimizerSection(), EarlyStoppingSection())
    memory = MemoryManager(MemorySection(), 8, lambda: 0.1)
    trainer = Trainer(TextClassifier(MLPHead(spec)), EmbeddingBatches(x, y), EmbeddingBatches(x, y), plan, memory,
                      torch.device("cpu"))  # fmt: skip
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1: the training loss became nan"):
        trainer.fit()


def test_a_batch_size_outside_the_memory_bounds_is_said(caplog):
    from bertcls.config.settings import MemorySection
    from bertcls.runtime.memory import MemoryManager

    with caplog.at_level("WARNING"):
        assert MemoryManager(MemorySection(), 1, lambda: 0.1).batch_size == 8
        assert MemoryManager(MemorySection(), 10**12, lambda: 0.1).batch_size == 64
    assert sum("is outside memory.min_batch_size" in r.getMessage() for r in caplog.records) == 2


def test_staging_folders_of_dead_processes_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    from bertcls.runtime.layout import RunLayout

    final = RunLayout(tmp_path).evaluation_dir
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".{final.name}.{socket.gethostname()}.{dead.stdout.strip()}.0123abcd"
    other_host = tmp_path / f".{final.name}.another-host.1.0123abcd"
    for folder in (left, other_host):
        (folder / "sub").mkdir(parents=True)
    staging = RunLayout.staging_for(final)
    assert not left.exists() and other_host.exists() and not staging.exists()


def test_lines_are_physical_lines_after_a_cell_that_spans_several(cli, tmp_path):
    data = tmp_path / "multi.csv"
    data.write_text('text,category\n"first line\nsecond line\nthird line",a\nfine,b\n,b\n')
    code, _, err = cli("train", "--output-root", tmp_path / "out", "--data-file", data)
    assert code == 2 and "CSV lines 6" in err


def test_labels_in_the_models_own_column_that_go_unscored_are_said(tmp_path, caplog):
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b"], "labels": ["x|y", "y"]}).to_csv(source, index=False)
    probs = np.array([[0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    options = PredictOptions(label_column="category", trained_label_columns=["labels"])
    with caplog.at_level("WARNING"):
        summary = predict_csv(FixedPredictor(["x", "y"], MultiLabel(), probs), str(source), str(tmp_path / "o.csv"),
                              options)  # fmt: skip
    assert not summary.has_labels
    assert any("--label-column labels" in r.getMessage() for r in caplog.records)
