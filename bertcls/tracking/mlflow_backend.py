"""MLflow: runs in an experiment on a tracking server, a database, or a local SQLite store under the output root."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from bertcls.config.settings import TrackingSection
from bertcls.runtime.layout import RunLayout
from bertcls.runtime.redaction import redact
from bertcls.tracking.records import RunSpec, TrackingRecord

logger = logging.getLogger(__name__)
BATCH_LIMIT = 100  # MLflow takes at most 100 parameters or tags per request
# a server that is down must not hold a run's end for minutes (MLflow's own default retries 7 times, backing off)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip


def store_uri(cfg: TrackingSection, root: Path) -> tuple[str, Path | None]:
    """The tracking URI and, for a local store, the folder its artifacts go to: a server or database URL as given;
    a folder (the default ``<root>/mlruns``) becomes an SQLite store in it (MLflow's file store is retired)."""
    uri = cfg.uri or str(RunLayout(root).mlruns_dir)
    if "://" in uri and not uri.startswith("file://"):
        return uri, None
    folder = Path(uri.removeprefix("file://")).expanduser().absolute()
    return f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts"


class MlflowBackend:
    name = "MLflow"

    def __init__(self, cfg: TrackingSection, root: Path, experiment: str):
        self.uri, self.artifacts = store_uri(cfg, root)
        self.experiment = experiment
        self._client: Any = None
        self._experiment_id = ""
        self._attached: set[str] = set()  # runs made by another command: never ended here

    @property
    def where(self) -> str:
        return redact(self.uri)

    def client(self) -> Any:
        """The client and experiment, made on first use (importing mlflow and opening a store take seconds)."""
        if self._client is None:
            for name, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
            from mlflow.tracking import MlflowClient

            if self.artifacts is not None:
                self.artifacts.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=self.uri)
            self._experiment_id = self._experiment(client)
            self._client = client
        return self._client

    def _experiment(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = self.artifacts.as_uri() if self.artifacts is not None else None
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:  # another process created it just now
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def start(self, spec: RunSpec, parent: str | None) -> str | None:
        client = self.client()
        attached = self._existing(spec)
        if attached is not None:
            self._attached.add(attached)
            self.set_tags(attached, spec.tags)
            return attached
        if spec.attach_only:
            return None
        reused = self._reused(spec)
        if reused is not None:  # its parameters were logged when it was made (MLflow never changes one)
            self.set_tags(reused, spec.tags)
            return reused
        tags = dict(spec.tags)
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(self._experiment_id, run_name=spec.name, tags=tags).info.run_id
        self.log_params(run_id, spec.params)
        if spec.reuse_tag is not None:
            run_id = self._first_of_tag(spec.reuse_tag, created=run_id)
        return run_id

    def _existing(self, spec: RunSpec) -> str | None:
        """The run of ``attach_to`` if it is in this store (a model tracked elsewhere gets a new run here)."""
        record = spec.attach_to
        if record is None or not record.mlflow_run_id or record.mlflow_uri != self.where:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(record.mlflow_run_id)
        except MlflowException:
            logger.info("The model's MLflow run %s is not in %s: a new run is made", record.mlflow_run_id, self.where)
            return None
        return None if run.info.lifecycle_stage == "deleted" else run.info.run_id

    def _runs_tagged(self, tag: tuple[str, str]) -> list[Any]:
        key, value = tag
        return self._client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`{key}` = '{value}'",
            order_by=["attributes.start_time ASC"],
            max_results=50,
        )

    def _reused(self, spec: RunSpec) -> str | None:
        if spec.reuse_tag is None:
            return None
        runs = self._runs_tagged(spec.reuse_tag)
        if not runs:
            return None
        self._client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id

    def _first_of_tag(self, tag: tuple[str, str], created: str) -> str:
        """Two workers that found no run with the tag may both have made one: the oldest stays, the others go."""
        runs = self._runs_tagged(tag)
        first = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else created
        if first != created:
            self._client.delete_run(created)
        return first

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self._log_in_batches(run_id, "params", [Param(k, v) for k, v in params.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._log_in_batches(run_id, "tags", [RunTag(k, v) for k, v in tags.items()])

    def _log_in_batches(self, run_id: str, kind: str, items: list[Any]) -> None:
        for start in range(0, len(items), BATCH_LIMIT):
            self._client.log_batch(run_id, **{kind: items[start : start + BATCH_LIMIT]})

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])

    def log_artifacts(self, run_id: str, folder: Path, prefix: str) -> None:
        self._client.log_artifacts(run_id, str(folder), artifact_path=prefix)

    def log_file(self, run_id: str, path: Path, prefix: str | None) -> None:
        self._client.log_artifact(run_id, str(path), artifact_path=prefix)

    def end(self, run_id: str, status: str) -> None:
        if run_id not in self._attached:
            self._client.set_terminated(run_id, status=status)

    def record(self, run_id: str) -> TrackingRecord:
        return TrackingRecord(mlflow_run_id=run_id, mlflow_experiment_id=self._experiment_id, mlflow_uri=self.where)
