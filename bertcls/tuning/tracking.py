"""A study in the trackers: one parent run per study (found again by resumed studies and other workers), a child
run per TPE trial and per PBT member, and the best trial marked."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import optuna

from bertcls.config.settings import Settings
from bertcls.runtime.redaction import redact
from bertcls.task.calibration import CalibrationRecord
from bertcls.tracking.records import RunSpec, TrackingRecord, ending
from bertcls.tracking.session import TrackedRun, Tracker
from bertcls.training.tracking import base_tags, final_metrics, settings_params

logger = logging.getLogger(__name__)
TRACKING_ATTR = "tracking"  # a trial's user attribute: where its run is tracked (TrackingRecord as JSON)


def trials_running(study: optuna.Study) -> bool:
    """Whether a trial of the study (of any worker) is running now."""
    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def study_key(study_name: str, storage_url: str) -> str:
    """Names one study wherever its workers run: its name and its storage (without passwords)."""
    return hashlib.sha256(f"{study_name}\x1f{redact(storage_url)}".encode()).hexdigest()[:16]


class StudyTracking:
    """The parent run of a study and the child runs this process adds to it. The parent is shared by every worker
    and every resumed run of the study, so a process ends it only when no trial of the study is running."""

    def __init__(self, tracker: Tracker, parent: TrackedRun, study_name: str):
        self.tracker, self.parent, self.study_name = tracker, parent, study_name

    @classmethod
    def untracked(cls) -> StudyTracking:
        run = TrackedRun.untracked()
        return cls(run.tracker, run, "")

    @classmethod
    def open(cls, settings: Settings, storage_url: str, tracker: Tracker) -> StudyTracking:
        name = settings.tuning.study_name
        key = study_key(name, storage_url)
        tags = {
            **base_tags(settings, "optimize"),
            "bertcls.study": name,
            "bertcls.study_key": key,
            "bertcls.strategy": settings.tuning.strategy,
            "bertcls.storage": redact(storage_url),
        }
        spec = RunSpec(settings.tracking.run_name or f"study-{name}", name, settings_params(settings), tags,
                       reuse_tag=("bertcls.study_key", key))  # fmt: skip
        return cls(tracker, tracker.start_run(spec), name)

    @contextlib.contextmanager
    def parent_run(self, study: optuna.Study) -> Iterator[None]:
        """Ends the parent as this process's part of the study ends (finished, killed or failed), unless a trial
        of another worker still runs: the last one to finish ends it."""

        def finish(status: str) -> None:
            if not trials_running(study):
                self.parent.end(status)

        with ending(finish):
            yield

    def child(self, name: str, params: dict[str, Any], tags: dict[str, Any]) -> TrackedRun:
        """A trial's or member's run under the study's (a member's ends when it is saved, or with the command)."""
        spec = RunSpec(name, name.replace("-", "_"), {k: str(v) for k, v in params.items()},
                       {"bertcls.study": self.study_name, **tags})  # fmt: skip
        return self.tracker.start_run(spec, parent=self.parent)

    @contextlib.contextmanager
    def child_run(self, name: str, params: dict[str, Any], tags: dict[str, Any]) -> Iterator[TrackedRun]:
        """A trial's run, ended as the block ends: a pruned trial is finished (and tagged pruned), a stopped one
        killed, an error fails it."""
        run = self.child(name, params, tags)
        with ending(run.end, normal=(optuna.TrialPruned,)):
            try:
                yield run
            except optuna.TrialPruned as pruned:
                run.set_tags({"bertcls.state": "PRUNED", "bertcls.stop_reason": str(pruned)})
                raise

    def finish_child(
        self,
        run: TrackedRun,
        metrics: dict[str, dict[str, float]],
        calibration: CalibrationRecord | None,
        tags: dict[str, Any],
    ) -> None:
        """A finished child's val/test metrics, calibration and tags."""
        run.log_metrics(final_metrics(metrics, calibration))
        run.set_tags(tags)

    def mark_best(self, study: optuna.Study, best: optuna.trial.FrozenTrial) -> None:
        """The parent names the best trial; once no trial runs, the run of every completed trial says whether it is
        the best (a trial tracked in another store is left alone)."""
        self.parent.set_tags({"bertcls.best_trial": best.number, "bertcls.best_value": best.value})
        if best.value is not None:
            self.parent.log_metrics({"best_value": float(best.value)}, best.number)
        if trials_running(study):
            return  # another worker still runs: the last one to finish marks the trials
        for trial in study.get_trials(deepcopy=False):
            stored = trial.user_attrs.get(TRACKING_ATTR)
            if stored:
                record = TrackingRecord.model_validate(json.loads(stored))
                spec = RunSpec(f"trial-{trial.number}", f"trial_{trial.number}", attach_to=record, attach_only=True)
                marker = self.tracker.start_run(spec)
                marker.set_tags({"bertcls.best_trial": str(trial.number == best.number).lower()})
                marker.end()
