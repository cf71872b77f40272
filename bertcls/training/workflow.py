"""The train workflow: prepare -> trainer -> score and save -> splits; resume and interruption."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from bertcls.config.settings import Settings
from bertcls.data.labelled import DataReport, write_splits
from bertcls.runtime.distributed import SINGLE, world
from bertcls.runtime.interrupts import Interrupted, StopRequest
from bertcls.runtime.layout import RunLayout
from bertcls.runtime.precision import describe as describe_precision
from bertcls.task import Task, task_for
from bertcls.tracking.records import TrackingRecord, run_name
from bertcls.tracking.session import TrackedRun, Tracker, open_tracker
from bertcls.training.callbacks import WorkflowHooks
from bertcls.training.fine_tuned_guard import guard_fine_tuned, guard_texts
from bertcls.training.preparation import PreparedRun, prepare
from bertcls.training.resume import ResumeWriter, check_resume_data, data_fingerprint, read_resume, settings_fingerprint
from bertcls.training.saving import TrainedModel, score_and_save
from bertcls.training.setup import make_trainer
from bertcls.training.tracking import EpochLogger, log_finished, prepared_tags, tracked, train_spec
from bertcls.training.trainer import Trainer, TrainResult

logger = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    task: Task
    checkpoint: Path
    result: TrainResult
    metrics: dict[str, dict[str, float]]
    report: DataReport
    truncation: dict[str, float]
    cache_hits: int
    cache_misses: int
    encoder_loaded: bool
    chunking: dict[str, int] | None = None
    lexical_features: int = 0
    precision: str = "fp32"
    phases: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds), in order


def run_training(
    settings: Settings,
    hooks: WorkflowHooks | None = None,
    stop_request=None,
    *,
    resume: bool = False,
    tracker: Tracker | None = None,
) -> TrainOutcome | None:
    """Train one model as configured, save ``best_trials/best_model.pt`` (with its model card) and the splits it
    used under ``data/`` (under torchrun: rank 0 does the writing and returns the outcome; the other ranks return
    None). After every epoch the run's state goes to ``checkpoints/last_state.pt`` (removed when the run finishes),
    so an interrupted run can go on with ``resume``. A ``stop_request`` that fires saves the best epoch so far, then
    raises :class:`Interrupted`. With ``tracking.backend`` set, rank 0 tracks the run (MLflow, TensorBoard), through
    ``tracker`` if the caller opened it already (its tracking process then starts while the caller imports)."""
    tracker = tracker or open_tracker(settings.tracking, settings.root)
    run = tracker.start_run(train_spec(settings, run_name("train", settings.tracking.run_name)))
    with tracked(tracker, run):
        return train_tracked(settings, hooks or WorkflowHooks(), stop_request, run, resume=resume)


def train_tracked(
    settings: Settings, hooks: WorkflowHooks, stop_request: StopRequest | None, tracking: TrackedRun, *, resume: bool
) -> TrainOutcome | None:
    settings_fp, state_path = settings_fingerprint(settings), RunLayout(settings.root).resume_state
    payload = read_resume(state_path, settings_fp) if resume else None
    run = prepare(settings, hooks, stop_request)
    here = world()
    if not run.features.fine_tune and not here.is_main:
        return None  # frozen mode: the embeddings were computed sharded; rank 0 trains the head
    ranks = here if run.features.fine_tune else SINGLE  # a frozen head trains on rank 0 alone
    trainer = make_trainer(settings, run.features, run.service, len(run.names), ranks)
    trainer.add_callback(hooks)
    data_fp = data_fingerprint(run.splits, settings.data, task_for(settings.model.task))
    guard = run.service.guard
    precision = f"{guard.precision} (checked after training)" if guard.pending else describe_precision(guard.verdict)
    tracking.set_tags(prepared_tags(run.service, data_fp, precision))
    if payload is not None:
        trainer.load_resume_state(check_resume_data(payload, data_fp))
        logger.info("Resuming after epoch %d from %s", trainer.state.epoch, state_path)
    if here.is_main:
        trainer.add_callback(ResumeWriter(state_path, settings_fp, data_fp))
        trainer.add_callback(EpochLogger(tracking))
    run.stage("Training")
    result = trainer.fit(stop_request)
    if not here.is_main:
        return None  # only rank 0 writes the checkpoint, the splits and files
    if trainer.state.interrupted and not result.best_state:
        assert stop_request is not None and stop_request.signum is not None  # only a stop request interrupts
        raise Interrupted(stop_request.signum, "Interrupted before the first epoch finished; nothing was saved.")
    stopping = trainer.state.interrupted or (stop_request is not None and stop_request.requested)
    if run.features.fine_tune and run.service.guard.pending and not stopping:
        check_fine_tuned(settings, run, trainer)  # a stopped run saves at once, unchecked
    if run.features.fine_tune:
        tracking.set_tags({"bertcls.precision": describe_precision(run.service.guard.record())})
    run.stage("Scoring and saving")
    outcome = save_trained(settings, run, trainer, data_fp, tracking.record())
    log_finished(tracking, outcome.metrics, trainer.calibration, result, outcome.checkpoint)
    run.stage.stop()
    outcome.phases = run.stage.phases
    if trainer.state.interrupted:
        assert stop_request is not None and stop_request.signum is not None
        raise Interrupted(
            stop_request.signum,
            f"Interrupted after epoch {trainer.state.epoch}: saved the best epoch ({result.best_epoch}) to "
            f"{outcome.checkpoint}. Run the same command with --resume to go on.",
        )
    state_path.unlink(missing_ok=True)
    return outcome


def check_fine_tuned(settings: Settings, run: PreparedRun, trainer: Trainer) -> None:
    """The precision guard on the fine-tuned model; calibrate again at fp32 when it falls back."""
    run.stage(f"Checking {run.service.precision} against fp32 on the fine-tuned model")
    texts = guard_texts(run.splits.val, run.splits.train, settings.data.text_column, settings.model.seed)
    try:
        check = guard_fine_tuned(run.service, trainer.model, run.names, run.features, texts)
    except Interrupted:  # a second Ctrl-C stops at once, as everywhere (the resume state is still there)
        raise
    except Exception as exc:  # noqa: BLE001 - never lose a trained model to its check
        logger.warning("The precision guard failed (%s); the model is saved unchecked and checked on first use.", exc)
        return
    if check is not None and not check.passed:
        trainer.fit_calibration()


def save_trained(
    settings: Settings, run: PreparedRun, trainer: Trainer, data_fp: dict[str, str], tracking: TrackingRecord | None
) -> TrainOutcome:
    """Score the best weights on val and test, save the checkpoint and its model card, then the splits beside it."""
    result, features = trainer.result, run.features
    data = run.provenance(data_fp, settings)
    trained = TrainedModel(
        settings, run.service, run.names, features, trainer.model, result, trainer.calibration, tracking
    )
    path, metrics = score_and_save(RunLayout(settings.root).best_model, trained, data=data, card=True)
    lexical = features.lexical
    write_splits(run.splits, settings.root)
    service = run.service
    lexical_count = lexical.spec.num_features if lexical is not None else 0
    return TrainOutcome(
        task_for(settings.model.task),
        path,
        result,
        metrics,
        run.report,
        run.features.truncation,
        service.stats.hits,
        service.stats.misses,
        service.encoder_loaded,
        run.features.chunking,
        lexical_count,
        describe_precision(service.guard.record()),  # a stopped fine-tuning run's: not checked yet
    )
