"""bertcls optimize: TPE studies, pruning, resume, several workers, heartbeats, PBT mechanics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from bertcls.config.sources import resolve_settings
from bertcls.training.callbacks import WorkflowHooks
from bertcls.training.preparation import prepare
from bertcls.tuning.pbt import exploit, new_member, replace_diverged, run_population, set_hyperparameters, take_snapshot
from bertcls.tuning.runner import run_optimize
from bertcls.tuning.search_space import hidden_dims
from bertcls.tuning.study import default_storage_url, make_storage, open_study
from bertcls.tuning.tpe import TrialSeededSampler, TuningContext
from tests.conftest import assert_explained, assert_served_like_predict, thread_subset

GOOD = {
    "batch_size": 32,
    "num_hidden_layers": 1,
    "dropout_rate": 0.2,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "warmup_ratio": 0.0,
    "activation": "gelu",
}


def tuning_settings(root: Path, data: Path, name: str = "s", **flags):
    base = {
        "output_root": str(root),
        "data.data_file": str(data),
        "model.max_seq_len": 128,
        "verbosity": 0,
        "model.num_epochs": 6,
        "tuning.study_name": name,
    }
    return resolve_settings({**base, **flags}).settings


def study_of(root: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=default_storage_url(root, name))


def optimize_args(root: Path, data: Path, study: str, *extra: str, epochs: int = 6) -> tuple:
    """``bertcls optimize`` on a small data set at 128 tokens, quietly; ``extra`` adds or overrides flags."""
    return (
        "optimize",
        "--output-root",
        root,
        "--data-file",
        data,
        "--study-name",
        study,
        "--max-seq-len",
        "128",
        "--num-epochs",
        str(epochs),
        "--verbosity",
        "0",
        *extra,
    )


def test_hidden_width_rule():
    assert [hidden_dims(n) for n in (1, 2, 4)] == [[512], [512, 256], [512, 256, 128, 64]]


@pytest.mark.slow
def test_tpe_study_finishes_and_best_model_predicts(cli, workspace, threads_small, tmp_path):
    root = workspace / "tuning"
    code, out, err = cli(*optimize_args(root, threads_small, "bert_opt", "--n-trials", "3"))
    assert code == 0, err
    study = study_of(root, "bert_opt")
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    assert (root / "best_trials" / "best_model_bert_opt_exp0.pt").is_file()
    assert (root / "optuna" / "bert_opt" / "trials.csv").is_file()
    assert (root / "optuna" / "bert_opt" / "optimization_history.png").is_file()
    from bertcls.model.checkpoint import load_checkpoint

    meta = load_checkpoint(root / "best_trials" / "best_model.pt").meta
    assert meta.tuning.study == "bert_opt" and meta.tuning.trial == study.best_trial.number
    assert meta.tuning.params == study.best_trial.params
    assert meta.architecture.head.activation == study.best_trial.params["activation"]
    assert len(meta.architecture.head.hidden_dims) == study.best_trial.params["num_hidden_layers"]
    code, out, err = cli(
        "predict",
        "--output-root",
        root,
        "--best-model",
        "best_model_bert_opt_exp0.pt",
        "--data-file",
        root / "data" / "test.csv",
        "--output-file",
        tmp_path / "p.csv",
        "--verbosity",
        "0",
    )
    assert code == 0 and "macro F1" in out, err
    assert_served_like_predict(root, "best_model_bert_opt_exp0.pt", thread_subset(2, seed=4).text.tolist())
    assert_explained(root, "best_model_bert_opt_exp0.pt", thread_subset(1, seed=4).text.iloc[0])


@pytest.mark.slow  # trains several trials: about 6 s
def test_hopeless_trial_is_pruned(workspace, threads_small):
    root = workspace / "tuning"
    # the lexical part has its own learning rate and alone separates the threads: the trial's lr is hopeless without it
    flags = {"tuning.n_trials": 4, "model.num_epochs": 8, "classifier.lexical_features": False}
    settings = tuning_settings(root, threads_small, "prune", **flags)
    study = open_study(
        make_storage(default_storage_url(root, "prune"), settings.tuning), "prune", TrialSeededSampler(0)
    )
    for _ in range(3):
        study.enqueue_trial(GOOD)
    study.enqueue_trial({**GOOD, "lr": 1e-6, "warmup_ratio": 0.3})
    run_optimize(settings)
    states = [t.state for t in study_of(root, "prune").trials]
    assert states[:3] == [TrialState.COMPLETE] * 3 and states[3] == TrialState.PRUNED
    assert "pruned" in study_of(root, "prune").trials[3].user_attrs["stop_reason"]


def test_second_run_resumes_and_adds_trials(workspace, threads_small):
    root = workspace / "tuning"
    run_optimize(tuning_settings(root, threads_small, "resume", **{"tuning.n_trials": 2}))
    first = [(t.number, t.value, t.params) for t in study_of(root, "resume").trials]
    outcome = run_optimize(tuning_settings(root, threads_small, "resume", **{"tuning.n_trials": 3}))
    trials = study_of(root, "resume").trials
    assert len(trials) == 3 and outcome.ran_here == 1
    assert [(t.number, t.value, t.params) for t in trials[:2]] == first
    assert (root / "best_trials" / "best_model_resume_exp1.pt").is_file()


def test_same_seed_same_suggestions(workspace, threads_small):
    values = []
    root = workspace / "tuning"
    for name in ("seed-a", "seed-b"):
        run_optimize(tuning_settings(root, threads_small, name, **{"tuning.n_trials": 2, "model.num_epochs": 2}))
        values.append([t.params for t in study_of(root, name).trials])
    assert values[0] == values[1]


def bertcls_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "bertcls", *[str(a) for a in args]]


def env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("BERTCLS_")} | {"HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_two_processes_share_one_study(workspace, threads_small, tmp_path):
    root = workspace / "tuning"
    run_optimize(
        tuning_settings(root, threads_small, "warm", **{"tuning.n_trials": 1, "model.num_epochs": 2})
    )  # fill the cache
    args = optimize_args(root, threads_small, "workers", "--n-trials", "6", epochs=4)
    workers = [
        subprocess.Popen(bertcls_cmd(*args), cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trials = study_of(root, "workers").trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)  # no duplicate configuration
    ran = [
        int(line.split("│")[2])
        for out, _ in outputs
        for line in out.decode().splitlines()
        if "run by this process" in line
    ]
    assert len(ran) == 2 and sum(ran) >= 6  # every finished trial was run by one of the two workers


@pytest.mark.slow
def test_dead_workers_running_trial_is_marked_failed(workspace, threads_small, tmp_path):
    root = workspace / "tuning"
    config = tmp_path / "hb.yml"
    config.write_text("tuning:\n  heartbeat_interval: 1\n  grace_period: 2\n")
    run_optimize(tuning_settings(root, threads_small, "hb", **{"tuning.n_trials": 1, "model.num_epochs": 2}))
    args = optimize_args(root, threads_small, "hb", "--config", config, "--n-trials", "3", epochs=200)
    worker = subprocess.Popen(
        bertcls_cmd(*args), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(t.state == TrialState.RUNNING for t in study_of(root, "hb").trials):
        time.sleep(0.5)
    time.sleep(1.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    stale = [t.number for t in study_of(root, "hb").trials if t.state == TrialState.RUNNING]
    assert stale, "the killed worker left no running trial"
    time.sleep(2.5)
    settings = resolve_settings(
        {
            "output_root": str(root),
            "data.data_file": str(threads_small),
            "model.max_seq_len": 128,
            "verbosity": 0,
            "model.num_epochs": 3,
            "tuning.study_name": "hb",
            "tuning.n_trials": 3,
        },
        str(config),
    ).settings
    run_optimize(settings)
    trials = {t.number: t for t in study_of(root, "hb").trials}
    assert all(trials[n].state == TrialState.FAIL for n in stale)
    assert len([t for t in trials.values() if t.state == TrialState.COMPLETE]) == 3


@pytest.fixture(scope="module")
def pbt_context(workspace, threads_small):
    settings = tuning_settings(workspace / "tuning", threads_small, "pbt-unit", **{"tuning.pbt.population_size": 2})
    run = prepare(settings, WorkflowHooks())
    return TuningContext(
        settings, run.service, run.features, run.splits, run.names, workspace / "tuning" / "pbt-unit", "pbt-unit"
    )


def test_exploit_copies_weights_optimizer_state_and_parameters(pbt_context):
    donor_params = {**GOOD, "num_hidden_layers": 2, "lr": 2e-3}
    donor = new_member(pbt_context, 0, donor_params)
    member = new_member(pbt_context, 1, GOOD)
    for m in (donor, member):
        m.trainer.run_epoch()
        take_snapshot(m)
    exploit(pbt_context, member, donor)
    assert member.params == donor_params and member.settings.classifier.hidden_dims == [512, 256]
    donor_state, member_state = donor.trainer.model.state_dict(), member.trainer.model.state_dict()
    assert donor_state.keys() == member_state.keys()
    assert all(torch.equal(donor_state[k], member_state[k]) for k in donor_state)
    donor_opt, member_opt = donor.trainer.optimizer.state_dict(), member.trainer.optimizer.state_dict()
    for key, state in donor_opt["state"].items():
        assert torch.equal(state["exp_avg"], member_opt["state"][key]["exp_avg"])
    assert member.trainer.optimizer.param_groups[0]["initial_lr"] == 2e-3
    member.trainer.run_epoch()  # training goes on from the copied state
    assert member.trainer.state.epoch == 2


def test_a_diverged_pbt_member_copies_the_best_healthy_one_and_never_keeps_nan_weights(pbt_context):
    from bertcls.runtime.errors import TrainingDiverged

    healthy, wild = new_member(pbt_context, 0, GOOD), new_member(pbt_context, 1, {**GOOD, "lr": 1e30})
    for member in (healthy, wild):
        record = member.trainer.run_epoch()
        member.diverged = not np.isfinite(record.train_loss)
        if not member.diverged:
            take_snapshot(member)
    assert wild.diverged and wild.last_metric == float("-inf") and not wild.trainer.result.best_state
    events = replace_diverged(pbt_context, [healthy, wild], epoch=1)
    assert events == [{"epoch": 1, "member": 1, "action": "exploit", "source": 0, "changes": {}}]
    assert not wild.diverged and wild.params == GOOD
    assert np.isfinite(wild.trainer.run_epoch().train_loss)  # it trains on from the healthy weights
    wild.diverged, healthy.diverged = True, True
    with pytest.raises(TrainingDiverged, match="Every PBT member's training loss became non-finite by epoch 2"):
        replace_diverged(pbt_context, [healthy, wild], epoch=2)


def test_explore_changes_the_running_optimizer_and_dropout(pbt_context):
    member = new_member(pbt_context, 0, GOOD)
    member.trainer.run_epoch()
    set_hyperparameters(member, {**GOOD, "lr": 1e-3, "weight_decay": 0.01, "dropout_rate": 0.5, "warmup_ratio": 0.2})
    group = member.trainer.optimizer.param_groups[0]
    assert group["initial_lr"] == 1e-3 and group["weight_decay"] == 0.01
    dropouts = [m.p for m in member.trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.5 for p in dropouts)
    assert member.trainer.optim_cfg.warmup_ratio == 0.2
    assert member.settings.optimizer.lr == 1e-3 and member.settings.classifier.dropout_rate == 0.5


@pytest.mark.slow
def test_pbt_command_saves_best_member_and_lineage(cli, workspace, threads_small):
    root = workspace / "tuning"
    code, out, err = cli(*optimize_args(root, threads_small, "pbt", "--strategy", "pbt"))
    assert code == 0, err
    folder = root / "optuna" / "pbt"
    assert (folder / "pbt_lineage.json").is_file() and (folder / "pbt_members.png").is_file()
    study = study_of(root, "pbt")
    assert len(study.trials) == 4 and all(t.user_attrs["strategy"] == "pbt" for t in study.trials)
    from bertcls.model.checkpoint import load_checkpoint

    meta = load_checkpoint(root / "best_trials" / "best_model_pbt_exp0.pt").meta
    assert meta.tuning.strategy == "pbt" and meta.tuning.params == study.best_trial.params
    texts = thread_subset(2, seed=4).text.tolist()
    assert_served_like_predict(root, "best_model_pbt_exp0.pt", texts)  # the exported best member, and a member
    assert_served_like_predict(root, str(folder / "trials" / "pbt_member_1.pt"), texts)
    assert_explained(root, str(folder / "trials" / "pbt_member_1.pt"), texts[0])


def test_a_member_that_exploits_a_deeper_donor_keeps_its_best_with_its_own_architecture(pbt_context, tmp_path):
    """The best epoch came before the exploit: the saved best weights are the 1-layer ones, and load as such."""
    from bertcls.model.checkpoint import build_classifier, load_checkpoint
    from bertcls.tuning.runner import save_member

    donor = new_member(pbt_context, 0, {**GOOD, "num_hidden_layers": 3, "activation": "tanh"})
    member = new_member(pbt_context, 1, GOOD)
    for m in (donor, member):
        m.trainer.run_epoch()
        m.note_epoch()
        take_snapshot(m)
    exploit(pbt_context, member, donor)
    assert member.settings.classifier.hidden_dims == [512, 256, 128] and member.trainer.state.epoch == 1
    assert member.best_settings.classifier.hidden_dims == [512]
    ctx = TuningContext(**{**pbt_context.__dict__, "trials_dir": tmp_path})
    path, metrics = save_member(ctx, member, [])
    ckpt = load_checkpoint(path)
    assert ckpt.architecture.head.hidden_dims == [512] and ckpt.architecture.head.activation == "gelu"
    build_classifier(ckpt, pbt_context.settings.root, need_encoder=False)
    assert 0 <= metrics["test"]["f1"] <= 1


def test_pbt_population_initial_points_come_from_the_search_space(pbt_context):
    from bertcls.tuning.search_space import distributions

    space = distributions(pbt_context.settings.tuning.search_space)
    outcome = run_population(
        TuningContext(
            **{
                **pbt_context.__dict__,
                "settings": pbt_context.settings.model_copy(
                    update={"model": pbt_context.settings.model.model_copy(update={"num_epochs": 1})}
                ),
            }
        )
    )
    for member in outcome.members:
        assert set(member.params) == set(space)
        for name, dist in space.items():
            value = member.params[name]
            assert value in dist.choices if hasattr(dist, "choices") else dist.low <= value <= dist.high


@pytest.mark.slow
def test_pbt_best_model_from_the_repo_config_goes_through_predict_evaluate_and_inspect(cli, tmp_path, threads_small):
    """The issue's report: with config.yml's [412, 220, 118] head in effect, PBT's export must be usable."""
    (tmp_path / "config.yml").write_text(
        "classifier:\n  hidden_dims: [412, 220, 118]\n  activation: relu\n"
        "tuning:\n  search_space:\n    num_hidden_layers: [1, 3]\n    activation: [tanh, gelu, silu]\n"
        "  pbt:\n    population_size: 4\n    perturbation_interval: 1\n    exploit_probability: 1.0\n"
    )
    root = tmp_path / "runs" / "pbt"
    code, out, err = cli(*optimize_args(root, threads_small, "pbtv", "--strategy", "pbt", "--n-trials", "4", epochs=4))
    assert code == 0, err
    from bertcls.model.checkpoint import load_checkpoint

    for path in sorted((root / "optuna" / "pbtv" / "trials").glob("pbt_member_*.pt")):
        ckpt = load_checkpoint(path)
        assert ckpt.architecture.head.activation in ("tanh", "gelu", "silu")
        assert ckpt.architecture.head.hidden_dims == ckpt.trained_settings(root).classifier.hidden_dims
        assert ckpt.architecture.head.hidden_dims != [412, 220, 118]
    code, out, err = cli(
        "predict",
        "--output-root",
        root,
        "--data-file",
        threads_small,
        "--output-file",
        tmp_path / "p.csv",
        "--verbosity",
        "0",
    )
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(pd.read_csv(threads_small))
    code, out, err = cli("evaluate", "--output-root", root, "--cv-folds", "3", "--verbosity", "0")
    assert code == 0 and "CV macro F1 (3 folds)" in out, err
    code, out, err = cli("inspect", "--output-root", root, "--json")
    assert code == 0, err
    info = json.loads(out)
    best = load_checkpoint(root / "best_trials" / "best_model_pbtv_exp0.pt")
    assert info["architecture"]["head"] == best.architecture.head.layers()
    assert info["tuning"]["strategy"] == "pbt" and info["tuning"]["member"] is not None
