"""The tracking process: ``python -m bertcls.tracking.agent`` reads one JSON request per line on stdin and makes
the backend calls (MLflow, TensorBoard) in order; answers and warnings go back as JSON lines on stdout.

It runs beside the command so that importing mlflow, creating a store and every request happen outside the
command's process: no interpreter lock or thread pool is shared with training, and it runs at a lower priority.
Its configuration (which may hold a password in a URI) arrives on stdin, never in its arguments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import IO, Any

from bertcls.config.settings import TrackingSection
from bertcls.runtime.redaction import redact
from bertcls.tracking.backends import Backend, make_backends
from bertcls.tracking.records import RunSpec, TrackingRecord


class Agent:
    def __init__(self, backends: list[Backend], out: IO[str]):
        self.backends = backends
        self.failed: set[int] = set()
        self.out = out
        self.runs: dict[int, dict[int, str]] = {}  # run handle -> {backend index: the backend's key}
        self.open: set[int] = set()  # started, not ended, and not shared with other processes

    def say(self, message: dict[str, Any]) -> None:
        try:
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()
        except (OSError, ValueError):  # the command is gone: nobody is listening any more
            pass

    def each(self, handle: int, call) -> list[Any]:
        """``call(backend, key)`` on every backend that has the run and has not failed; a failure is said once."""
        answers = []
        for index, key in self.runs.get(handle, {}).items():
            answers.append(self.guarded(index, lambda b, k=key: call(b, k)))
        return answers

    def guarded(self, index: int, call) -> Any:
        if index in self.failed:
            return None
        backend = self.backends[index]
        try:
            return call(backend)
        except Exception as exc:  # noqa: BLE001 - a tracker must never stop the command
            self.failed.add(index)
            text = str(exc).strip()
            reason = redact(text.splitlines()[0] if text else type(exc).__name__)[:300]
            self.say({"warning": f"{backend.name} tracking ({backend.where}) failed, and this command goes on "
                                 f"without it: {reason}"})  # fmt: skip
            return None

    def start(self, handle: int, request: dict[str, Any]) -> None:
        raw = request["spec"]
        attach = raw.get("attach_to")
        spec = RunSpec(
            raw["name"], raw["folder"], raw.get("params", {}), raw.get("tags", {}),
            TrackingRecord.model_validate(attach) if attach else None,
            tuple(raw["reuse_tag"]) if raw.get("reuse_tag") else None, bool(raw.get("attach_only")),
        )  # fmt: skip
        parent = request.get("parent")
        parents = self.runs.get(parent, {}) if parent is not None else {}
        keys = {}
        for index in range(len(self.backends)):
            key = self.guarded(index, lambda b, i=index: b.start(spec, parents.get(i)))
            if key is not None:
                keys[index] = key
        self.runs[handle] = keys
        if spec.reuse_tag is None:
            self.open.add(handle)

    def record(self, handle: int) -> dict[str, Any] | None:
        merged: dict[str, Any] = {}
        for part in self.each(handle, lambda b, k: b.record(k)):
            if part is not None:
                merged.update(part.model_dump(exclude_none=True))
        return merged or None

    def handle(self, request: dict[str, Any]) -> bool:
        """Carry out one request; False once the command closed the link."""
        op, run = request["op"], request.get("run", -1)
        if op == "start":
            self.start(run, request)
        elif op == "params":
            self.each(run, lambda b, k: b.log_params(k, request["params"]))
        elif op == "tags":
            self.each(run, lambda b, k: b.set_tags(k, request["tags"]))
        elif op == "metrics":
            self.each(run, lambda b, k: b.log_metrics(k, request["metrics"], request["step"]))
        elif op == "artifacts":
            self.each(run, lambda b, k: b.log_artifacts(k, Path(request["folder"]), request["prefix"]))
        elif op == "file":
            self.each(run, lambda b, k: b.log_file(k, Path(request["path"]), request.get("prefix")))
        elif op == "end":
            self.each(run, lambda b, k: b.end(k, request["status"]))
            self.open.discard(run)
        elif op == "record":
            self.say({"answer": request["ask"], "record": self.record(run)})
        elif op == "close":
            self.end_open(request.get("status", "FINISHED"))
            self.say({"answer": request["ask"]})
            return False
        return True

    def end_open(self, status: str) -> None:
        """Runs the command did not end (it failed, was stopped, or went away) end with ``status``."""
        for handle in sorted(self.open):
            self.each(handle, lambda b, k: b.end(k, status))
        self.open.clear()


def quiet() -> None:
    """Nothing of mlflow's or alembic's own logging or warnings reaches the command's console, and Ctrl-C is the
    command's to handle (it then ends its runs as killed through this process; the process also runs in a session
    of its own, so signals sent to the command's process group do not reach it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.CRITICAL)
    with contextlib.suppress(OSError):
        os.nice(10)  # a tracker waits; training does not


def main() -> None:
    quiet()
    opening = json.loads(sys.stdin.readline() or "{}")
    if opening.get("op") != "open":
        return
    cfg = TrackingSection.model_validate(opening["tracking"])
    agent = Agent(make_backends(cfg, Path(opening["root"]), opening["experiment"]), sys.stdout)
    for line in sys.stdin:
        if line.strip() and not agent.handle(json.loads(line)):
            return
    agent.end_open("KILLED")  # the command went away without closing


if __name__ == "__main__":
    main()
