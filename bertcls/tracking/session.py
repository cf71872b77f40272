"""The tracker a command holds. It starts the tracking process (:mod:`bertcls.tracking.agent`) and hands it every
call as one JSON line, from a writer thread, so logging never waits on a tracker. Two things do wait, each for
``tracking.flush_timeout_s`` at most: asking where a run is tracked (once per saved model, for its checkpoint) and
the command's end. A backend that fails is said once, as a warning; the command goes on."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from bertcls.config.settings import TrackingSection
from bertcls.runtime.distributed import world
from bertcls.runtime.errors import DataError
from bertcls.runtime.redaction import redact
from bertcls.tracking.records import RunSpec, TrackingRecord, clip_tags

logger = logging.getLogger(__name__)
REQUIRED_MODULES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}


def check_installed(cfg: TrackingSection) -> None:
    """``--track`` names a tracker whose package is missing: one sentence, before any work is done."""
    for name in cfg.backend:
        if importlib.util.find_spec(REQUIRED_MODULES[name]) is None:
            raise DataError(
                f"--track {name} needs the {name} package; install it with pip install 'bertcls[tracking]'."
            )


class AgentLink:
    """The pipe to the tracking process: requests go out through a writer thread (never blocking the command);
    answers and warnings come back through a reader thread."""

    def __init__(self, opening: dict[str, Any]):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bertcls.tracking.agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            env=env,
            start_new_session=True,  # the command's Ctrl-C or a signal to its group is the command's to handle
        )
        self.outbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.answers: dict[int, Future] = {}
        self.asks = itertools.count()
        self.closing = False
        self.dead = False  # its output ended: nothing more will be answered
        self.lock = threading.Lock()
        threading.Thread(target=self._write, name="bertcls-tracking-writer", daemon=True).start()
        threading.Thread(target=self._read, name="bertcls-tracking-reader", daemon=True).start()
        self.send(opening)

    def send(self, request: dict[str, Any]) -> None:
        self.outbox.put(request)

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send a request that the tracking process answers; None if it does not within ``timeout`` seconds (at once,
        if it has gone)."""
        with self.lock:  # registered before the reader's last sweep, or not at all
            if self.dead:
                return None
            number = next(self.asks)
            answer: Future = Future()
            self.answers[number] = answer
        self.send({**request, "ask": number})
        try:
            return answer.result(timeout=timeout)
        except FutureTimeout:
            return None

    def _write(self) -> None:
        stream = self.process.stdin
        assert stream is not None
        while (request := self.outbox.get()) is not None:
            try:
                stream.write(json.dumps(request) + "\n")
                stream.flush()
            except (OSError, ValueError):  # the tracking process is gone; the reader says so
                return
        stream.close()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "warning" in message:
                logger.warning("%s", redact(str(message["warning"])))
            elif "answer" in message and message["answer"] in self.answers:
                self.answers.pop(message["answer"]).set_result(message)
        if not self.closing:
            logger.warning("The tracking process ended early (exit code %s); this command goes on without it.",
                           self.process.poll())  # fmt: skip
        with self.lock:
            self.dead = True
            for answer in self.answers.values():
                if not answer.done():
                    answer.set_result(None)

    def close(self, timeout: float, status: str) -> bool:
        """Wait until the tracking process has carried out every request and ended the runs still open with
        ``status``; False if it had not after ``timeout`` seconds. Then its input closes and it exits by itself (its
        clean-up is not waited for). Requests not yet handed to it when the command exits are lost, and it ends the
        runs they belonged to as killed."""
        self.closing = True  # from here on, the end of its output is expected
        done = self.ask({"op": "close", "status": status}, timeout) is not None
        self.outbox.put(None)
        return done


class Tracker:
    """Starts runs; each run's calls reach the backends in order, in the tracking process."""

    def __init__(self, cfg: TrackingSection, link: AgentLink | None):
        self.cfg = cfg
        self.link = link
        self.handles = itertools.count()

    @property
    def enabled(self) -> bool:
        return self.link is not None

    def start_run(self, spec: RunSpec, parent: TrackedRun | None = None) -> TrackedRun:
        if self.link is None:
            return TrackedRun(self, None)
        handle = next(self.handles)
        body = {
            "name": spec.name,
            "folder": spec.folder,
            "params": spec.params,
            "tags": clip_tags(spec.tags),
            "attach_to": spec.attach_to.model_dump() if spec.attach_to is not None else None,
            "reuse_tag": list(spec.reuse_tag) if spec.reuse_tag is not None else None,
            "attach_only": spec.attach_only,
        }
        parent_handle = parent.handle if parent is not None else None
        self.link.send({"op": "start", "run": handle, "parent": parent_handle, "spec": body})
        return TrackedRun(self, handle)

    def close(self, status: str = "FINISHED") -> None:
        """Wait (at most ``tracking.flush_timeout_s``) for every call sent so far to reach the trackers; runs not
        ended yet (a failed or stopped command's) end with ``status``."""
        link, self.link = self.link, None
        if link is not None and not link.dead and not link.close(self.cfg.flush_timeout_s, status):
            logger.warning(
                "Tracking had not caught up after %.0f s; the runs it had not finished end as killed.",
                self.cfg.flush_timeout_s,
            )


class TrackedRun:
    """One run on every backend; each call returns at once."""

    def __init__(self, tracker: Tracker, handle: int | None):
        self.tracker = tracker
        self.handle = handle

    @classmethod
    def untracked(cls) -> TrackedRun:
        """A run that goes nowhere (tracking off)."""
        return cls(Tracker(TrackingSection(), None), None)

    def _send(self, op: str, **fields: Any) -> None:
        link = self.tracker.link
        if link is not None and self.handle is not None:
            link.send({"op": op, "run": self.handle, **fields})

    def log_params(self, params: dict[str, str]) -> None:
        self._send("params", params=params)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._send("tags", tags=clip_tags(tags))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if metrics:
            self._send("metrics", metrics=dict(metrics), step=step)

    def log_artifacts(self, folder: Path, prefix: str) -> None:
        self._send("artifacts", folder=str(Path(folder).absolute()), prefix=prefix)

    def log_file(self, path: Path, prefix: str | None = None) -> None:
        self._send("file", path=str(Path(path).absolute()), prefix=prefix)

    def end(self, status: str = "FINISHED") -> None:
        self._send("end", status=status)

    def record(self) -> TrackingRecord | None:
        """Where this run is tracked (waits for the tracking process, at most ``tracking.flush_timeout_s``); None if
        no backend has it."""
        link = self.tracker.link
        if link is None or self.handle is None:
            return None
        answer = link.ask({"op": "record", "run": self.handle}, self.tracker.cfg.flush_timeout_s)
        if answer is None:
            if not link.dead:  # a process that is gone was said once already
                logger.warning("The tracking run had not started after %.0f s.", self.tracker.cfg.flush_timeout_s)
            return None
        return TrackingRecord.model_validate(answer["record"]) if answer.get("record") else None


def open_tracker(cfg: TrackingSection, root: Path) -> Tracker:
    """The tracker of a command: none configured, or another rank of a torchrun launch (rank 0 tracks), gives one
    that does nothing."""
    if not cfg.backend or not world().is_main:
        return Tracker(cfg, None)
    check_installed(cfg)
    experiment = cfg.experiment or Path(root).absolute().name or "bertcls"
    opening = {"op": "open", "tracking": cfg.model_dump(mode="json"), "root": str(Path(root).absolute()),
               "experiment": experiment}  # fmt: skip
    return Tracker(cfg, AgentLink(opening))
