"""Experiment tracking against a real MLflow tracking server (``mlflow server`` on loopback with an SQLite store,
started and stopped here) and TensorBoard event files read back with TensorBoard's own reader; the model card."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from bertcls.model.checkpoint import load_checkpoint
from bertcls.runtime.layout import RunLayout
from tests.conftest import thread_subset

PASSWORD = "hunter2-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a loopback port with an SQLite backend store and a local artifact folder."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
            str(folder / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BERTCLS_"))}
        self.log = (folder / "server.log").open("w")
        self.process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not answer /health within 120 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tracked_data") / "threads150.csv"
    thread_subset(30, seed=3).to_csv(path, index=False)
    return path


def runs_of(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def tracked_train(mlflow_server, small_csv, tmp_path_factory):
    """A frozen train tracked to the server and to TensorBoard, with a password in a setting train does not use."""
    from bertcls.cli.app import run

    root = tmp_path_factory.mktemp("tracked") / "tracked_root"
    storage = f"postgresql://bob:{PASSWORD}@127.0.0.1:9/studies"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERTCLS_TUNING__STORAGE", storage)
        patch.chdir(root.parent)
        code = run(["train", "--output-root", str(root), "--data-file", str(small_csv), "--num-epochs", "4",
                    "--max-seq-len", "64", "--track", "mlflow", "--track", "tensorboard", "--tracking-uri",
                    mlflow_server.url, "--run-name", "first-train", "-v", "0"])  # fmt: skip
    assert code == 0
    return root


@pytest.mark.slow
def test_train_logs_settings_tags_and_the_checkpoints_history_exactly(tracked_train, mlflow_server):
    ckpt = load_checkpoint(RunLayout(tracked_train).best_model)
    record = ckpt.meta.tracking
    assert record is not None and record.mlflow_uri == mlflow_server.url and record.tensorboard_dir
    client = mlflow_server.client()
    tracked = client.get_run(record.mlflow_run_id)
    assert tracked.info.run_name == "first-train" and tracked.info.status == "FINISHED"
    assert client.get_experiment(tracked.info.experiment_id).name == "tracked_root"  # the output root's name
    params, tags = tracked.data.params, tracked.data.tags
    assert params["model.num_epochs"] == "4" and params["model.max_seq_len"] == "64"
    assert params["tuning.storage"] == "postgresql://bob:***@127.0.0.1:9/studies"  # masked
    assert all(PASSWORD not in value for value in [*params.values(), *tags.values()])
    assert tags["bertcls.task"] == "multiclass" and tags["bertcls.world_size"] == "1"
    assert tags["bertcls.encoder_fingerprint"] == ckpt.architecture.encoder.fingerprint
    assert tags["bertcls.data.train"] == ckpt.meta.data.fingerprint["train"]
    assert tags["bertcls.stop_reason"] == ckpt.meta.stop_reason and tags["bertcls.checkpoint"].endswith("best_model.pt")
    assert tags["bertcls.precision"] and tags["bertcls.device"] == "cpu" and tags["bertcls.version"]
    history = ckpt.meta.history
    assert len(history) == 4
    for name in ("train_loss", "val_loss", "accuracy", "f1", "lr", "batch_size", "seconds"):
        logged = [(m.step, m.value) for m in client.get_metric_history(tracked.info.run_id, name)]
        assert sorted(logged) == [(r.epoch, float(getattr(r, name))) for r in history], name
    metrics = tracked.data.metrics
    assert (
        metrics["final_test_f1"] == ckpt.meta.metrics["test"]["f1"]
        and metrics["final_val_loss"] == ckpt.meta.metrics["val"]["loss"]
    )
    assert metrics["calibration_temperature"] == ckpt.temperature
    assert "MODEL_CARD.md" in [a.path for a in client.list_artifacts(tracked.info.run_id)]


@pytest.mark.slow
def test_tensorboard_events_hold_the_history_in_float64(tracked_train):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    ckpt = load_checkpoint(RunLayout(tracked_train).best_model)
    folder = Path(ckpt.meta.tracking.tensorboard_dir)
    assert folder.parent == tracked_train.absolute() / "tensorboard"
    events = EventAccumulator(str(folder)).Reload()
    for name in ("train_loss", "val_loss", "f1", "lr"):
        logged = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(name)]
        assert logged == [(r.epoch, float(getattr(r, name))) for r in ckpt.meta.history], name


@pytest.mark.slow
def test_inspect_shows_the_run_and_evaluate_attaches_its_results_to_it(tracked_train, mlflow_server, cli):
    code, out, _ = cli("inspect", "--output-root", tracked_train)
    run_id = load_checkpoint(RunLayout(tracked_train).best_model).meta.tracking.mlflow_run_id
    assert code == 0 and run_id in out.replace("\n", "")
    code, out, _ = cli("inspect", "--output-root", tracked_train, "--json")
    assert json.loads(out)["tracking"]["mlflow_run_id"] == run_id
    code, _, err = cli("evaluate", "--output-root", tracked_train, "--cv-folds", "2", "--track", "mlflow",
                       "--tracking-uri", mlflow_server.url, "-v", "0")  # fmt: skip
    assert code == 0, err
    client = mlflow_server.client()
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/cv_metrics.csv", "evaluation/summary.json"} <= artifacts
    assert any(p.endswith(".png") for p in artifacts)
    summary = json.loads((RunLayout(tracked_train).evaluation_dir / "summary.json").read_text())
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval_macro_f1"] == summary["metrics"]["macro_f1"]
    folds = client.get_metric_history(run_id, "cv_macro_f1")
    assert sorted(m.step for m in folds) == [1, 2]
    assert np.isclose(np.mean([m.value for m in folds]), summary["cv_mean"]["macro_f1"])
    assert len(runs_of(client, "tracked_root")) == 1  # the train run, nothing new
    card = (RunLayout(tracked_train).best_dir / "MODEL_CARD.md").read_text()
    assert "2-fold cross-validation" in card and ("Abstention" in card or "No confidence threshold" in card)


@pytest.mark.slow
def test_evaluate_of_an_untracked_model_makes_a_new_run(trained_model, mlflow_server, cli, tmp_path):
    root = tmp_path / "untracked_copy"
    shutil.copytree(trained_model, root)
    code, _, err = cli("evaluate", "--output-root", root, "--cv-folds", "0", "--track", "mlflow",
                       "--tracking-uri", mlflow_server.url, "--run-name", "eval-untracked", "-v", "0")  # fmt: skip
    assert code == 0, err
    runs = [r for r in runs_of(mlflow_server.client(), root.name) if r.info.run_name == "eval-untracked"]
    assert len(runs) == 1 and "eval_accuracy" in runs[0].data.metrics and runs[0].info.status == "FINISHED"


def optimize_command(root: Path, data: Path, server: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bertcls", "optimize", "--output-root", str(root), "--data-file", str(data),
            "--n-trials", str(trials), "--num-epochs", "3", "--max-seq-len", "64", "--track", "mlflow",
            "--tracking-uri", server, "-v", "0", *extra]  # fmt: skip


@pytest.mark.slow
def test_two_workers_and_a_resumed_study_share_one_parent_run(mlflow_server, small_csv, tmp_path, cli):
    root = tmp_path / "study_root"
    code, _, err = cli("train", "--output-root", root, "--data-file", small_csv, "--num-epochs", "1",
                       "--max-seq-len", "64", "-v", "0")  # fmt: skip
    assert code == 0, err  # the embedding cache both workers read
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            optimize_command(root, small_csv, mlflow_server.url, 4),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    code, _, err = cli(*optimize_command(root, small_csv, mlflow_server.url, 5)[3:])  # resumed: one more trial
    assert code == 0, err
    runs = runs_of(mlflow_server.client(), "study_root")
    parents = [
        r for r in runs if r.data.tags.get("bertcls.study") == "bert_opt" and "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert all(r.info.status == "FINISHED" and r.data.tags["bertcls.state"] in ("COMPLETE", "PRUNED") for r in children)
    import optuna

    study = optuna.load_study(study_name="bert_opt", storage=f"sqlite:///{root / 'optuna' / 'bert_opt.db'}")
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t.number for t in study.get_trials(states=states)]
    assert len(finished) == 5  # a surplus trial that lost the race between the workers fails and keeps its number
    assert sorted(int(r.data.tags["bertcls.trial"]) for r in children) == sorted(finished)
    best = [r for r in children if r.data.tags.get("bertcls.best_trial") == "true"]
    assert [int(r.data.tags["bertcls.trial"]) for r in best] == [study.best_trial.number]
    assert parent.data.tags["bertcls.best_trial"] == str(study.best_trial.number)
    complete = [r for r in children if r.data.tags["bertcls.state"] == "COMPLETE"]
    for child in complete:  # each trial's epochs, as its checkpoint holds them
        ckpt = load_checkpoint(child.data.tags["bertcls.checkpoint"])
        assert ckpt.meta.tracking.mlflow_run_id == child.info.run_id
        f1 = sorted((m.step, m.value) for m in mlflow_server.client().get_metric_history(child.info.run_id, "f1"))
        assert f1 == [(r.epoch, r.f1) for r in ckpt.meta.history]


@pytest.mark.slow
def test_pbt_members_are_child_runs_with_their_lineage(mlflow_server, small_csv, tmp_path, cli):
    root = tmp_path / "pbt_root"
    code, _, err = cli(*optimize_command(root, small_csv, mlflow_server.url, 2, "--strategy", "pbt")[3:])
    assert code == 0, err
    runs = runs_of(mlflow_server.client(), "pbt_root")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    members = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["bertcls.member"]) for r in members) == list(range(4))  # the default population
    for member in members:
        lineage = json.loads(member.data.tags["bertcls.lineage"])
        assert all(event["member"] == int(member.data.tags["bertcls.member"]) for event in lineage)
        assert int(member.data.tags["bertcls.exploits"]) == sum(e["action"] == "exploit" for e in lineage)
        ckpt = load_checkpoint(member.data.tags["bertcls.checkpoint"])
        assert ckpt.meta.tracking.mlflow_run_id == member.info.run_id
        assert [e["epoch"] for e in ckpt.meta.tuning.lineage] == [e["epoch"] for e in lineage]
    assert sum(r.data.tags.get("bertcls.best_trial") == "true" for r in members) == 1
    best = RunLayout(root).best_model
    assert load_checkpoint(best).meta.tracking.mlflow_run_id in {m.info.run_id for m in members}
    assert (best.parent / "MODEL_CARD.md").is_file()


class StopServerAfterEpoch:
    """Stops the tracking server when the first epoch ends (a server that goes away mid-run)."""

    def __init__(self, server: MlflowServer):
        self.server = server

    def on_epoch_end(self, trainer, record) -> None:
        if record.epoch == 1:
            self.server.stop()


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_gives_one_warning_and_training_finishes(small_csv, tmp_path, caplog):
    from bertcls.config.sources import resolve_settings
    from bertcls.training.callbacks import WorkflowHooks
    from bertcls.training.workflow import run_training

    server = MlflowServer(tmp_path / "doomed")

    class Hooks(StopServerAfterEpoch, WorkflowHooks):
        pass

    settings = resolve_settings({
        "output_root": str(tmp_path / "root"), "data.data_file": str(small_csv), "model.num_epochs": 4,
        "model.max_seq_len": 64, "tracking.backend": "mlflow", "tracking.uri": server.url, "verbosity": 0,
    }).settings  # fmt: skip
    caplog.set_level(logging.WARNING, logger="bertcls")
    try:
        started = time.monotonic()
        outcome = run_training(settings, Hooks(server))
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert outcome is not None and len(outcome.result.history) == 4 and outcome.checkpoint.is_file()
    warnings = [r for r in caplog.records if r.name.startswith("bertcls.tracking") and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "MLflow tracking" in warnings[0].getMessage() and "goes on without it" in warnings[0].getMessage()
    assert elapsed < 120


@pytest.mark.slow
def test_an_unreachable_server_at_the_start_warns_once_and_trains(small_csv, tmp_path, cli):
    port = free_port()  # nothing listens there
    code, _, err = cli("train", "--output-root", tmp_path / "r", "--data-file", small_csv, "--num-epochs", "2",
                       "--max-seq-len", "48", "--track", "mlflow", "--tracking-uri", f"http://127.0.0.1:{port}",
                       "-v", "0")  # fmt: skip
    assert code == 0, err
    said = " ".join(err.split())
    assert said.count("MLflow tracking") == 1 and "goes on without it" in said
    assert load_checkpoint(RunLayout(tmp_path / "r").best_model).meta.tracking is None


@pytest.mark.slow
def test_default_local_store_and_tensorboard_under_the_output_root(small_csv, tmp_path, cli):
    root = tmp_path / "local"
    code, _, err = cli("train", "--output-root", root, "--data-file", small_csv, "--num-epochs", "2",
                       "--max-seq-len", "48", "--track", "mlflow,tensorboard", "-v", "0")  # fmt: skip
    assert code == 0, err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root.absolute() / 'mlruns' / 'mlflow.db'}")
    runs = runs_of(client, "local")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.artifact_uri.startswith((root.absolute() / "mlruns" / "artifacts").as_uri())
    assert len(list((root / "tensorboard").iterdir())) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--track", "wandb"], "unknown tracking backend 'wandb'"),
        (["--track", "mlflow", "--tracking-uri", "ftp://host/x"], "scheme 'ftp'"),
    ],
)
def test_bad_tracking_settings_are_one_sentence_and_exit_2(flags, message, cli, tmp_path, small_csv):
    code, _, err = cli("train", "--output-root", tmp_path / "r", "--data-file", small_csv, *flags)
    assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "r" / "best_trials").exists()


def test_a_missing_tracking_package_is_one_sentence(cli, tmp_path, small_csv, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, _, err = cli("train", "--output-root", tmp_path / "r", "--data-file", small_csv, "--track", "mlflow")
    assert code == 2 and "pip install 'bertcls[tracking]'" in " ".join(err.split()) and "Traceback" not in err


def test_tracker_names_parse_from_flags_env_and_yaml():
    from bertcls.config.settings import TrackingSection, parse_trackers

    assert parse_trackers("mlflow,tensorboard") == ["mlflow", "tensorboard"]
    assert parse_trackers(["MLflow", "mlflow"]) == ["mlflow"]
    assert parse_trackers("none") == [] and TrackingSection().backend == []
    assert TrackingSection(uri="postgresql+psycopg://u:p@h/db").uri.startswith("postgresql+psycopg://")


def test_settings_are_flattened_with_secrets_masked():
    from bertcls.config.settings import Settings
    from bertcls.training.tracking import settings_params

    settings = Settings(tuning={"storage": f"mysql://root:{PASSWORD}@db/optuna"}, serve={"api_key": PASSWORD})
    params = settings_params(settings)
    assert params["tuning.storage"] == "mysql://root:***@db/optuna"
    assert all(PASSWORD not in value for value in params.values())
    assert params["classifier.hidden_dims"] == "[512]" and params["model.seed"] == "42"


def test_model_card_is_generated_from_the_checkpoint(trained_model):
    card_path = RunLayout(trained_model).best_dir / "MODEL_CARD.md"
    text = card_path.read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    ckpt = load_checkpoint(RunLayout(trained_model).best_model)
    assert meta["library_name"] == "bertcls" and meta["pipeline_tag"] == "text-classification"
    assert meta["language"] == ["en"]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["f1 (test split)"] == round(ckpt.meta.metrics["test"]["f1"], 4)
    for section in ("## Model description", "## Training data", "## Evaluation results", "## How to use",
                    "## Limitations", "bertcls predict", "bertcls serve"):  # fmt: skip
        assert section in body, section
    for label, count in ckpt.meta.data.label_counts.items():
        assert f"| {label} | {count:,} |" in body
    assert sum(ckpt.meta.data.rows.values()) == 300 and ckpt.meta.data.fingerprint["train"] in body
    assert f"{ckpt.meta.data.truncation['fraction']:.1%}" in body


def test_languages_are_estimated_from_function_words():
    from bertcls.data.languages import language_of, languages_seen

    assert language_of("The parcel was not delivered and they have not answered") == "English"
    assert language_of("Der Hund ist nicht mit mir auf dem Weg") == "German"
    assert language_of("Привет, как дела?") == "Cyrillic script"
    assert language_of("ok 123") == "undetermined"
    assert languages_seen(["the cat is on the mat and it is fine"] * 3 + ["Le chat est dans la maison avec nous"]) == {
        "English": 0.75,
        "French": 0.25,
    }


def script_by_every_character(text: str) -> str | None:
    """The script rule read character by character (the definition the fast version must match)."""
    import unicodedata
    from collections import Counter

    scripts: Counter[str] = Counter()
    for char in text:
        if char.isalpha():
            name = unicodedata.name(char, "")
            scripts[name.split(" ")[0] if name else "UNKNOWN"] += 1
    if not scripts:
        return None
    script, count = scripts.most_common(1)[0]
    return None if script == "LATIN" or count < sum(scripts.values()) / 2 else f"{script.title()} script"


def test_the_script_of_a_text_is_the_character_by_character_rule_ties_included():
    import random

    from bertcls.data.languages import script_of

    alphabet = [*"abcXYZ ,.1", *"абвгд", *"日本語", *"αβγ", *"éüñß", "🙂", "–"]
    draw = random.Random(0)
    texts = ["абв abc", "abc абв", "日本 ab", "αβγ δε abcde", "é", "", "–🙂"]
    texts += ["".join(draw.choice(alphabet) for _ in range(draw.randint(0, 12))) for _ in range(20000)]
    assert [script_of(t) for t in texts] == [script_by_every_character(t) for t in texts]


@pytest.mark.slow
def test_a_stopped_run_ends_killed_and_its_resumed_run_holds_the_whole_history(small_csv, tmp_path):
    from mlflow.tracking import MlflowClient

    from bertcls.config.sources import resolve_settings
    from bertcls.runtime.interrupts import Interrupted, StopRequest
    from bertcls.training.workflow import run_training
    from tests.test_resilience import StopAfter

    flags = {"output_root": str(tmp_path / "stopped"), "data.data_file": str(small_csv), "model.num_epochs": 4,
             "model.max_seq_len": 48, "early_stopping.enabled": False, "tracking.backend": "mlflow",
             "verbosity": 0}  # fmt: skip
    settings = resolve_settings(flags).settings
    request = StopRequest()
    with pytest.raises(Interrupted):
        run_training(settings, StopAfter(request, 2), request)
    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'stopped' / 'mlruns' / 'mlflow.db').absolute()}")
    [stopped] = runs_of(client, "stopped")
    assert stopped.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(stopped.info.run_id, "f1")) == [1, 2]
    outcome = run_training(settings, resume=True)
    ckpt = load_checkpoint(outcome.checkpoint)
    resumed = client.get_run(ckpt.meta.tracking.mlflow_run_id)
    assert resumed.info.status == "FINISHED" and resumed.info.run_id != stopped.info.run_id
    logged = sorted((m.step, m.value) for m in client.get_metric_history(resumed.info.run_id, "val_loss"))
    assert logged == [(r.epoch, r.val_loss) for r in ckpt.meta.history] and len(logged) == 4


def tensorboard_tracker(root: Path):
    from bertcls.config.settings import TrackingSection
    from bertcls.tracking.session import open_tracker

    return open_tracker(TrackingSection(backend=["tensorboard"], flush_timeout_s=20), root)


def test_a_tracking_process_that_dies_is_said_once_and_never_waited_for(tmp_path, caplog):
    from bertcls.tracking.records import RunSpec

    tracker = tensorboard_tracker(tmp_path)
    run = tracker.start_run(RunSpec("r", "r"))
    assert run.record() is not None  # it is up
    caplog.set_level(logging.WARNING, logger="bertcls")
    tracker.link.process.kill()
    tracker.link.process.wait()
    started = time.monotonic()
    for epoch in range(3):
        run.log_metrics({"f1": 0.5}, epoch)
        assert run.record() is None
    run.end()
    tracker.close()
    assert time.monotonic() - started < 5  # not one flush timeout (20 s) per question
    said = [r.getMessage() for r in caplog.records if r.name.startswith("bertcls.tracking")]
    assert len(said) == 1 and "ended early" in said[0]


def test_runs_left_open_end_with_the_commands_status_and_attach_only_makes_nothing(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    from bertcls.tracking.records import RunSpec, TrackingRecord

    tracker = tensorboard_tracker(tmp_path)
    member = tracker.start_run(RunSpec("member-0", "member_0"))  # never ended by the command
    gone = TrackingRecord(tensorboard_dir=str(tmp_path / "elsewhere"))
    marker = tracker.start_run(RunSpec("trial-0", "trial_0", attach_to=gone, attach_only=True))
    assert marker.record() is None
    twice = tracker.start_run(RunSpec("member-0", "member_0"))  # the same name again: a folder of its own
    twice.end()
    tracker.close("FAILED")
    folders = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert folders == ["member_0", "member_0-2"]
    events = EventAccumulator(str(tmp_path / "tensorboard" / "member_0")).Reload()
    [status] = events.Tensors("status")
    assert tensor_util.make_ndarray(status.tensor_proto).tolist() == [b"FAILED"]
    assert member.record() is None  # the tracker is closed
