"""``optimize``: run a TPE study or a PBT population and export the best model."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bertcls.config.settings import Settings
from bertcls.data.labelled import write_splits
from bertcls.inference.batches import calibrate
from bertcls.model.card import write_model_card
from bertcls.model.checkpoint import TuningProvenance, load_checkpoint
from bertcls.runtime.layout import MODEL_CARD, RunLayout
from bertcls.task import task_for
from bertcls.tracking.records import ending
from bertcls.tracking.session import Tracker, open_tracker
from bertcls.training.callbacks import WorkflowHooks
from bertcls.training.preparation import PreparedRun, prepare
from bertcls.training.resume import data_fingerprint
from bertcls.training.saving import TrainedModel, score_and_save
from bertcls.training.setup import rebuild_model
from bertcls.tuning import results
from bertcls.tuning.pbt import Member, PBTOutcome, run_population
from bertcls.tuning.search_space import distributions, uses_linear_head
from bertcls.tuning.study import count_trials, default_storage_url, make_storage, open_study, redact
from bertcls.tuning.tpe import TrialSeededSampler, TuningContext, run_trials
from bertcls.tuning.tracking import TRACKING_ATTR, StudyTracking

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
    checkpoint (the study records the same parameters for the member's trial); its tracked run ends here."""
    result, (settings, params) = member.trainer.result, member.best()
    model = rebuild_model(settings, ctx.service, len(ctx.names), result.best_state)
    calibration = calibrate(model, ctx.features.sources["val"], ctx.service.device, settings.calibration)
    events = [e for e in lineage if e["member"] == member.index]
    tuning = TuningProvenance(study=ctx.study_name, strategy="pbt", member=member.index, params=params, lineage=events)
    path = ctx.trials_dir / f"pbt_member_{member.index}.pt"
    record = member.run.record()
    trained = TrainedModel(settings, ctx.service, ctx.names, ctx.features, model, result, calibration, record)
    path, metrics = score_and_save(path, trained, tuning, ctx.data)
    ctx.tracking.finish_child(member.run, metrics, calibration, lineage_tags(events, params, path))
    member.run.end()
    member.record = record
    return path, metrics


def lineage_tags(events: list[dict[str, Any]], params: dict[str, Any], path: Path) -> dict[str, Any]:
    """A PBT member's exploits and perturbations as tags: one per event, the whole lineage, its best parameters."""
    tags: dict[str, Any] = {
        "bertcls.state": "COMPLETE",
        "bertcls.checkpoint": str(path.absolute()),
        "bertcls.best_params": json.dumps(params),
        "bertcls.exploits": sum(e["action"] == "exploit" for e in events),
        "bertcls.lineage": json.dumps(events),
    }
    for event in events:
        source = f" member {event['source']}" if event.get("source") is not None else ""
        tags[f"bertcls.epoch_{event['epoch']}"] = f"{event['action']}{source} {json.dumps(event['changes'])}"
    return tags


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
                    **({TRACKING_ATTR: member.record.model_dump_json(exclude_none=True)} if member.record else {}),
                    "checkpoint": str(path),
                    "member": member.index,
                    "strategy": "pbt",
                    "epochs": len(result.history),
                    "test_f1": metrics["test"]["f1"],
                    "test_accuracy": metrics["test"]["accuracy"],
                },
            )
        )


def run_optimize(
    settings: Settings, hooks: OptimizeHooks | None = None, tracker: Tracker | None = None
) -> OptimizeOutcome:
    """Run the study (tracked as one parent run with a child per trial or member, when tracking is on; through
    ``tracker`` if the caller opened it already, so that its process started early)."""
    tracker = tracker or open_tracker(settings.tracking, settings.root)
    with ending(tracker.close):  # a member or trial run still open ends with the study's status
        return optimize_tracked(settings, hooks or OptimizeHooks(), tracker)


def optimize_tracked(settings: Settings, hooks: OptimizeHooks, tracker: Tracker) -> OptimizeOutcome:
    tuning, root = settings.tuning, settings.root
    url = tuning.storage or default_storage_url(root, tuning.study_name)
    run = prepare(settings, hooks)  # embeddings computed once for the study
    folder = RunLayout(root).study_dir(tuning.study_name)
    folder.mkdir(parents=True, exist_ok=True)
    hooks.on_stage(f"Study {tuning.study_name!r} in {redact(url)}")
    study = open_study(make_storage(url, tuning), tuning.study_name, TrialSeededSampler(settings.model.seed))
    tracking = StudyTracking.open(settings, url, tracker)
    with tracking.parent_run(study):
        return run_study(settings, hooks, run, study, tracking, folder)


def run_study(
    settings: Settings,
    hooks: OptimizeHooks,
    run: PreparedRun,
    study: optuna.Study,
    tracking: StudyTracking,
    folder: Path,
) -> OptimizeOutcome:
    tuning, root = settings.tuning, settings.root
    data = run.provenance(data_fingerprint(run.splits, settings.data, task_for(settings.model.task)), settings)
    ctx = TuningContext(
        settings, run.service, run.features, run.splits, run.names, folder / "trials", tuning.study_name, hooks,
        tracking, data,
    )  # fmt: skip
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
    tracking.mark_best(study, best)
    exp_path, best_path = results.export_best(Path(best.user_attrs["checkpoint"]), root, tuning.study_name)
    write_model_card(best_path.with_name(MODEL_CARD), load_checkpoint(best_path).meta, root.absolute().name)
    write_splits(run.splits, root)
    test = {"f1": best.user_attrs.get("test_f1"), "accuracy": best.user_attrs.get("test_accuracy")}
    value = float(best.value) if best.value is not None else float("nan")  # a completed trial has a value
    url = redact(tuning.storage or default_storage_url(root, tuning.study_name))
    return OptimizeOutcome(study, url, best.number, value, best.params, test, exp_path, best_path, folder, ran)
