"""Strategy ``tpe``: an Optuna study; every trial trains through the same loop and saves the same checkpoint."""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler, TPESampler

from bertcls.config.settings import Settings
from bertcls.data.labelled import Splits
from bertcls.features.service import EmbeddingService
from bertcls.features.sets import FeatureSet, build_features
from bertcls.model.checkpoint import DataProvenance, TuningProvenance
from bertcls.runtime.errors import TrainingDiverged
from bertcls.runtime.fileio import pid_alive
from bertcls.tracking.session import TrackedRun
from bertcls.training.callbacks import TrainerCallback, WorkflowHooks
from bertcls.training.saving import TrainedModel, score_and_save
from bertcls.training.setup import make_trainer
from bertcls.training.tracking import EpochLogger
from bertcls.tuning.search_space import apply, original_early_stopping, suggest, uses_linear_head
from bertcls.tuning.study import count_trials
from bertcls.tuning.tracking import TRACKING_ATTR, StudyTracking

logger = logging.getLogger(__name__)


class SurplusTrial(Exception):
    """Another worker already started the last trial the study needs."""


class TrialSeededSampler(BaseSampler):
    """TPE with a fresh random state per trial, seeded from (seed, trial number): one worker is reproducible, and
    workers sharing a study never draw the same random values. Only Optuna's public sampler API is used: each trial
    is delegated to its own ``TPESampler(seed=...)``, which reads the study's history as any TPE sampler does."""

    def __init__(self, seed: int, **tpe_options: Any):
        self.seed = seed
        self.tpe_options = tpe_options
        self._samplers: dict[int, TPESampler] = {}

    def for_trial(self, number: int) -> TPESampler:
        if number not in self._samplers:
            trial_seed = (self.seed * 1_000_003 + number) % 2**32
            self._samplers = {number: TPESampler(seed=trial_seed, **self.tpe_options)}  # only the running trial's
        return self._samplers[number]

    def infer_relative_search_space(self, study, trial):
        return self.for_trial(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.for_trial(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.for_trial(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.for_trial(trial.number).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.for_trial(trial.number).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's random state already derives from its number."""


class PruningCallback(TrainerCallback):
    """Reports each epoch's metric to the trial and stops the loop when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer, record) -> None:
        self.trial.report(getattr(record, self.metric), record.epoch)
        if self.trial.should_prune():
            self.pruned_at = record.epoch
            trainer.control.stop(f"pruned by the median pruner after epoch {record.epoch}")


@dataclass
class TuningContext:
    """What every trial of this process shares: settings, encoder service, features (embeddings computed once)."""

    settings: Settings
    service: EmbeddingService
    features: FeatureSet
    splits: Splits
    names: list[str]
    trials_dir: Path
    study_name: str
    hooks: WorkflowHooks = field(default_factory=WorkflowHooks)
    tracking: StudyTracking = field(default_factory=StudyTracking.untracked)
    data: DataProvenance | None = None  # what every trial is trained on (for checkpoints and model cards)

    def trial_features(self) -> FeatureSet:
        if not self.features.fine_tune:
            return self.features
        self.service.reload_encoder()  # every fine-tuning trial starts from the pretrained encoder
        return build_features(self.service, self.splits, self.names, self.settings, fine_tune=True)


def train_trial(ctx: TuningContext, trial: optuna.Trial, params: dict) -> float:
    """Train one configuration (tracked as a child of the study's run); save its checkpoint; return its best
    validation metric."""
    tags = {"bertcls.trial": trial.number, "bertcls.strategy": "tpe"}
    with ctx.tracking.child_run(f"trial-{trial.number}", params, tags) as run:
        return train_tracked_trial(ctx, trial, params, run)


def train_tracked_trial(ctx: TuningContext, trial: optuna.Trial, params: dict, run: TrackedRun) -> float:
    settings = ctx.settings
    stopping = original_early_stopping(trial.number, settings.model.num_epochs, settings.early_stopping)
    trial_settings = apply(settings, params, stopping)
    features = ctx.trial_features()
    trainer = make_trainer(trial_settings, features, ctx.service, len(ctx.names))
    pruning = PruningCallback(trial, settings.model.metric)
    trainer.add_callback(pruning)
    trainer.add_callback(ctx.hooks)
    trainer.add_callback(EpochLogger(run))
    started = time.perf_counter()
    try:
        result = trainer.fit()
    except TrainingDiverged as exc:  # a configuration that diverges is a bad trial, not a failed study
        trial.set_user_attr("stop_reason", str(exc))
        raise optuna.TrialPruned(str(exc)) from None
    trial.set_user_attr("epochs", len(result.history))
    trial.set_user_attr("stop_reason", result.stop_reason)
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(result.stop_reason)
    tuning = TuningProvenance(
        study=ctx.study_name, strategy="tpe", trial=trial.number, params=params, seconds=time.perf_counter() - started
    )
    record = run.record()
    trained = TrainedModel(
        trial_settings, ctx.service, ctx.names, features, trainer.model, result, trainer.calibration, record
    )
    path, metrics = score_and_save(ctx.trials_dir / f"trial_{trial.number}.pt", trained, tuning, ctx.data)
    done = {"bertcls.state": "COMPLETE", "bertcls.stop_reason": result.stop_reason, "bertcls.checkpoint": str(path)}
    ctx.tracking.finish_child(run, metrics, trainer.calibration, done)
    if record is not None:
        trial.set_user_attr(TRACKING_ATTR, record.model_dump_json(exclude_none=True))
    trial.set_user_attr("checkpoint", str(path))
    trial.set_user_attr("test_f1", metrics["test"]["f1"])
    trial.set_user_attr("test_accuracy", metrics["test"]["accuracy"])
    return result.best_metric


def make_objective(ctx: TuningContext, study: optuna.Study, target: int) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        if count_trials(study, exclude=trial.number) >= target:
            raise SurplusTrial(f"trial {trial.number} is not needed: the study already has {target} trials")
        trial.set_user_attr("host", socket.gethostname())  # so a later run can tell its process died
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, ctx.settings.tuning.search_space, linear=uses_linear_head(ctx.settings))
        return train_trial(ctx, trial, params)

    return objective


def fail_orphaned_trials(study: optuna.Study) -> int:
    """Fail at once the RUNNING trials of processes on this host that no longer exist (a killed worker), instead of
    waiting for the heartbeat's grace period; trials of other hosts are left to the heartbeat."""
    host, failed = socket.gethostname(), 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and pid is not None and not pid_alive(int(pid)):
            try:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            except (ValueError, RuntimeError):  # another worker failed it first
                continue
            logger.warning("Trial %d belonged to process %s, which is gone: marked failed.", trial.number, pid)
            failed += 1
    return failed


def run_trials(
    ctx: TuningContext,
    study: optuna.Study,
    target: int,
    timeout: float | None,
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> int:
    """Run trials until the study holds ``target`` finished or running trials (all workers together)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = 0
    objective = make_objective(ctx, study, target)
    callbacks = [on_trial_end] if on_trial_end else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's RUNNING trials must not count towards the target
    fail_orphaned_trials(study)
    while count_trials(study) < target:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            logger.info("Timeout reached after %d trial(s) in this process", ran)
            break
        study.optimize(
            objective,
            n_trials=1,
            timeout=remaining,
            catch=(SurplusTrial,),
            callbacks=callbacks,
            gc_after_trial=False,
            show_progress_bar=False,
        )
        ran += 1
    return ran
