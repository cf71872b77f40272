"""``optimize``: run a TPE study or a PBT population and export the best model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bertcls.config.settings import Settings
from bertcls.data.labelled import write_splits
from bertcls.inference.batches import calibrate
from bertcls.model.checkpoint import TuningProvenance
from bertcls.runtime.layout import RunLayout
from bertcls.training.callbacks import WorkflowHooks
from bertcls.training.preparation import prepare
from bertcls.training.saving import TrainedModel, score_and_save
from bertcls.training.setup import rebuild_model
from bertcls.tuning import results
from bertcls.tuning.pbt import Member, PBTOutcome, run_population
from bertcls.tuning.search_space import distributions, uses_linear_head
from bertcls.tuning.study import count_trials, default_storage_url, make_storage, open_study, redact
from bertcls.tuning.tpe import TrialSeededSampler, TuningContext, run_trials

logger = logging.getLogger(__name__)


class OptimizeHooks(WorkflowHooks):
    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...

    def on_pbt_epoch(self, epoch: int, members: list) -> None: ...


@dataclass
class OptimizeOutcome:
    study: optuna.Study
    storage: str
    best_trial: int
    best_value: float
    params: dict[str, Any]
    test_metrics: dict[str, float | None]
    exp_path: Path
    best_path: Path
    folder: Path
    ran_here: int


def save_member(ctx: TuningContext, member: Member, lineage: list[dict[str, Any]]) -> tuple[Path, dict]:
    """A member's best weights with the settings and parameters that built them, scored on val and test, saved as a
    checkpoint (the study records the same parameters for the member's trial)."""
    result, (settings, params) = member.trainer.result, member.best()
    model = rebuild_model(settings, ctx.service, len(ctx.names), result.best_state)
    calibration = calibrate(model, ctx.features.sources["val"], ctx.service.device, settings.calibration)
    tuning = TuningProvenance(
        study=ctx.study_name,
        strategy="pbt",
        member=member.index,
        params=params,
        lineage=[e for e in lineage if e["member"] == member.index],
    )
    path = ctx.trials_dir / f"pbt_member_{member.index}.pt"
    trained = TrainedModel(settings, ctx.service, ctx.names, ctx.features, model, result, calibration)
    return score_and_save(path, trained, tuning)


def record_population(ctx: TuningContext, study: optuna.Study, outcome: PBTOutcome) -> None:
    """Save every member's checkpoint and add each member to the study as a finished trial."""
    space = distributions(ctx.settings.tuning.search_space, linear=uses_linear_head(ctx.settings))
    for member in outcome.members:
        path, metrics = save_member(ctx, member, outcome.lineage)
        result = member.trainer.result
        study.add_trial(
            optuna.trial.create_trial(
                params=member.best()[1],
                distributions=space,
                value=result.best_metric,
                user_attrs={
                    "checkpoint": str(path),
                    "member": member.index,
                    "strategy": "pbt",
                    "epochs": len(result.history),
                    "test_f1": metrics["test"]["f1"],
                    "test_accuracy": metrics["test"]["accuracy"],
                },
            )
        )


def run_optimize(settings: Settings, hooks: OptimizeHooks | None = None) -> OptimizeOutcome:
    hooks = hooks or OptimizeHooks()
    tuning, root = settings.tuning, settings.root
    run = prepare(settings, hooks)  # embeddings computed once for the study
    folder = RunLayout(root).study_dir(tuning.study_name)
    folder.mkdir(parents=True, exist_ok=True)
    url = tuning.storage or default_storage_url(root, tuning.study_name)
    hooks.on_stage(f"Study {tuning.study_name!r} in {redact(url)}")
    study = open_study(make_storage(url, tuning), tuning.study_name, TrialSeededSampler(settings.model.seed))
    ctx = TuningContext(
        settings, run.service, run.features, run.splits, run.names, folder / "trials", tuning.study_name, hooks
    )
    if tuning.strategy == "pbt":
        outcome = run_population(ctx, hooks.on_pbt_epoch)
        record_population(ctx, study, outcome)
        results.write_pbt_results(outcome.members, outcome.lineage, folder)
        ran = len(outcome.members)
    else:
        before = count_trials(study)
        ran = run_trials(ctx, study, tuning.n_trials, tuning.timeout, hooks.on_trial_end)
        logger.info("This process ran %d trial(s); the study had %d before", ran, before)
    results.write_trials_csv(study, folder)
    results.write_study_plots(study, folder)
    best = results.best_local_trial(study)
    exp_path, best_path = results.export_best(Path(best.user_attrs["checkpoint"]), root, tuning.study_name)
    write_splits(run.splits, root)
    test = {"f1": best.user_attrs.get("test_f1"), "accuracy": best.user_attrs.get("test_accuracy")}
    value = float(best.value) if best.value is not None else float("nan")  # a completed trial has a value
    return OptimizeOutcome(study, redact(url), best.number, value, best.params, test, exp_path, best_path, folder, ran)
