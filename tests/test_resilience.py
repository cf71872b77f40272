"""Resilience and security: interrupts and resume, one writer per output root, masked secrets, and the bad inputs
that used to end in a traceback or lose earlier results."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.config.sources import resolve_settings
from bertcls.model.checkpoint import load_checkpoint
from bertcls.runtime.errors import DataError
from bertcls.runtime.interrupts import Interrupted, StopRequest
from bertcls.runtime.layout import RunLayout
from bertcls.training.callbacks import WorkflowHooks
from bertcls.training.workflow import run_training

SECRET = "s3cretpw-xyz"


def settings_for(root, data, **extra):
    flags = {"output_root": str(root), "data.data_file": str(data), "model.max_seq_len": 64, "verbosity": 0}
    flags.update({"model.num_epochs": 5, "early_stopping.enabled": False, **extra})
    return resolve_settings(flags).settings


class StopAfter(WorkflowHooks):
    """Asks the run to stop once ``epoch`` has finished, as a first Ctrl-C would."""

    def __init__(self, request: StopRequest, epoch: int):
        self.request, self.epoch = request, epoch

    def on_epoch_end(self, trainer, record) -> None:
        if trainer.state.epoch == self.epoch:
            self.request.signum = signal.SIGINT


@pytest.mark.slow
def test_resume_after_an_interrupt_ends_like_an_uninterrupted_run(workspace, threads_small):
    whole = run_training(settings_for(workspace / "resume-whole", threads_small))
    root = workspace / "resume-split"
    request = StopRequest()
    with pytest.raises(Interrupted, match="after epoch 2"):
        run_training(settings_for(root, threads_small), StopAfter(request, 2), request)
    layout = RunLayout(root)
    assert layout.resume_state.is_file() and load_checkpoint(layout.best_model).meta.best_epoch <= 2
    resumed = run_training(settings_for(root, threads_small), resume=True)
    assert not layout.resume_state.exists()  # a finished run removes its resume state
    strip = lambda history: [{k: v for k, v in r.model_dump().items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resumed.result.history) == strip(whole.result.history)
    assert resumed.result.best_epoch == whole.result.best_epoch and resumed.metrics == whole.metrics
    a, b = load_checkpoint(whole.checkpoint).state, load_checkpoint(resumed.checkpoint).state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_with_other_settings_or_nothing_to_resume_is_refused(workspace, threads_small, tmp_path):
    root = workspace / "resume-refused"
    request = StopRequest()
    with pytest.raises(Interrupted):
        run_training(settings_for(root, threads_small), StopAfter(request, 1), request)
    with pytest.raises(DataError, match=r"settings differ.*optimizer\.lr"):
        run_training(settings_for(root, threads_small, **{"optimizer.lr": 0.01}), resume=True)
    with pytest.raises(DataError, match="Nothing to resume"):
        run_training(settings_for(tmp_path / "fresh", threads_small), resume=True)


@pytest.mark.slow
def test_sigint_to_a_real_train_saves_the_best_epoch(workspace, threads_small, tmp_path):
    root = workspace / "sigint"
    config = tmp_path / "no_stop.yml"
    config.write_text("early_stopping:\n  enabled: false\n")
    command = [sys.executable, "-m", "bertcls", "train", "--output-root", str(root), "--data-file", str(threads_small)]
    command += ["--num-epochs", "200", "--max-seq-len", "64", "--config", str(config), "--verbosity", "0"]
    worker = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        logs = glob.glob(str(root / "logs" / "train_*.log"))
        if logs and "epoch 3:" in Path(logs[0]).read_text():
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGINT)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err
    assert "Interrupted after epoch" in err and "--resume" in err and "Traceback" not in err
    ckpt = load_checkpoint(root / "best_trials" / "best_model.pt")
    assert len(ckpt.meta.history) >= 3 and ckpt.meta.stop_reason.startswith("interrupted")
    assert not list(root.rglob("*.tmp")) and not RunLayout(root).lock.exists()


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(trained_model, threads_small, cli, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = RunLayout(tmp_path / "root").lock
    lock.parent.mkdir()
    info = {"pid": holder.pid, "host": socket.gethostname(), "command": "train", "started": "2026-11-27T10:00:00"}
    lock.write_text(pd.Series(info).to_json())
    try:
        code, _, err = cli("train", "--output-root", lock.parent, "--data-file", threads_small)
        assert code == 2 and f"PID {holder.pid}" in err and "bertcls train" in err
    finally:
        holder.kill()
        holder.wait()
    stale = RunLayout(trained_model).lock
    stale.write_text(pd.Series({**info, "pid": holder.pid}).to_json())  # that process is gone now
    code, _, err = cli("evaluate", "--output-root", trained_model, "--cv-folds", "0", "--verbosity", "0")
    assert code == 0, err
    assert "Taking over the lock" in err and not stale.exists()


@pytest.mark.slow
def test_no_password_reaches_any_file_or_output(workspace, threads_small, cli, tmp_path, monkeypatch):
    root = tmp_path / "secret-root"
    url = f"postgresql://bertcls:{SECRET}@127.0.0.1:9/nowhere"
    code, out, err = cli(*optimize_cli(root, threads_small, "--storage", url))
    assert code == 2 and SECRET not in out + err and "***" in err
    monkeypatch.setenv("BERTCLS_TUNING__STORAGE", url)
    code, out, err = cli("config", "validate", "--output-root", root)
    assert code == 0 and SECRET not in out + err and "bertcls:***@" in " ".join(out.split())
    code, out, err = cli(
        "train", "--output-root", root, "--data-file", threads_small, "--num-epochs", "1", "--verbosity", "2"
    )  # the resolved settings (with the URL) are logged and saved in the checkpoint
    assert code == 0 and SECRET not in out + err
    for path in root.rglob("*"):
        if path.is_file() and "cache" not in path.parts and "bert_encoder" not in path.parts:
            assert SECRET.encode() not in path.read_bytes(), path


def optimize_cli(root, data, *extra):
    return ("optimize", "--output-root", root, "--data-file", data, "--n-trials", "1", "--verbosity", "2", *extra)


@pytest.mark.slow
def test_a_failed_run_keeps_the_earlier_model_and_its_splits(workspace, threads_small, cli, tmp_path):
    root = workspace / "keep-earlier"
    code, _, err = cli("train", "--output-root", root, "--data-file", threads_small, "--num-epochs", "1", "-v", "0")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in (root / "data").iterdir()}
    other = tmp_path / "other.csv"
    pd.read_csv(threads_small).head(150).to_csv(other, index=False)
    code, _, err = cli("train", "--output-root", root, "--data-file", other, "--device", "cuda")
    assert code == 2 and "not available" in err
    assert {p.name: p.read_bytes() for p in (root / "data").iterdir()} == before


def test_bad_outputs_and_environment_are_one_sentence(trained_model, threads_small, cli, tmp_path, monkeypatch):
    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    started = time.monotonic()
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", threads_small, "--output-file", folder)
    assert code == 2 and "is a directory" in err and time.monotonic() - started < 20  # refused before any work
    a_file = tmp_path / "root.txt"
    a_file.write_text("not a folder")
    code, _, err = cli("train", "--output-root", a_file, "--data-file", threads_small)
    assert code == 2 and "is a file" in err
    code, _, err = cli("config", "validate", "--config", tmp_path)
    assert code == 2 and "is a directory" in err
    monkeypatch.setenv("BERTCLS_CLASSIFIER__HIDDEN_DIMS", "[256")
    code, _, err = cli("config", "validate")
    assert code == 2 and "BERTCLS_CLASSIFIER__HIDDEN_DIMS" in err and "Traceback" not in err


def test_binary_and_nul_inputs(trained_model, threads_small, cli, tmp_path, caplog):
    import zipfile

    sheet = tmp_path / "sheet.csv"
    with zipfile.ZipFile(sheet, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    for args in (("train", "--data-file", sheet), ("train", "--data-file", sheet, "--encoding", "latin-1")):
        code, _, err = cli(args[0], "--output-root", tmp_path / "r", *args[1:])
        assert code == 2 and "not a text CSV" in err and "xlsx" in err
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", sheet)
    assert code == 2 and "not a text CSV" in err
    from bertcls.config.settings import DataSection
    from bertcls.data.labelled import read_labelled_csv

    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"text,category\nhello\x00 world,a\n")
    with caplog.at_level("WARNING"):
        frame = read_labelled_csv(nul, DataSection())
    assert frame.text[0] == "hello world" and "NUL" in caplog.text


def test_atomic_writes_follow_the_umask_and_clean_up_after_killed_writers(tmp_path):
    from bertcls.runtime.fileio import write_text_atomic

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".out.csv.{socket.gethostname()}.{dead.pid}.abc123.tmp"
    leftover.write_text("half a file")
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "out.csv", "a,b\n")
    finally:
        os.umask(old)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644
    assert not leftover.exists()


def test_work_per_text_cell_is_bounded(workspace):
    from bertcls.features.lexical import LexicalFeatures
    from bertcls.model.encoder import MAX_TEXT_CHARS, Encoder, bounded, export_default_encoder

    huge = "word " * 2_000_000  # 10 MB in one cell
    assert len(bounded([huge])[0]) == MAX_TEXT_CHARS
    encoder = Encoder(export_default_encoder(workspace), 64, "mean")
    assert encoder.token_lengths([huge])[0] <= MAX_TEXT_CHARS // 4  # only the bounded text is tokenised
    features = LexicalFeatures.fit(["word one", "word two"], resolve_settings({}).settings.lexical)
    assert features.transform([huge])[0].sum() > 0


@pytest.mark.slow
def test_killed_workers_running_trial_is_failed_at_once(workspace, threads_small, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from bertcls.tuning.runner import run_optimize
    from bertcls.tuning.study import default_storage_url

    root = workspace / "orphan"
    settings = resolve_settings(
        {
            "output_root": str(root),
            "data.data_file": str(threads_small),
            "model.max_seq_len": 64,
            "verbosity": 0,
            "model.num_epochs": 2,
            "tuning.study_name": "orphan",
            "tuning.n_trials": 1,
        }
    ).settings
    run_optimize(settings)
    study = optuna.load_study(study_name="orphan", storage=default_storage_url(root, "orphan"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = study.ask()
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", dead.pid)
    run_optimize(settings.model_copy(update={"tuning": settings.tuning.model_copy(update={"n_trials": 2})}))
    trials = {
        t.number: t for t in optuna.load_study(study_name="orphan", storage=default_storage_url(root, "orphan")).trials
    }
    assert trials[orphan.number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 2
    assert np.isfinite([t.value for t in trials.values() if t.state == TrialState.COMPLETE]).all()


def test_passwords_with_slashes_or_at_signs_are_masked_whole():
    from bertcls.runtime.redaction import redact

    for url in ("postgresql://u:pa/ss@db.example:5432/x", "mysql://user:p@ss@host/db", "postgresql://u:plain@h/d"):
        masked = redact(f"Cannot open {url} now")
        assert "***@" in masked and "pa/ss" not in masked and "p@ss" not in masked and "plain" not in masked
    assert redact("sqlite:///runs/study.db") == "sqlite:///runs/study.db"
