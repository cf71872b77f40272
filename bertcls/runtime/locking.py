"""One writer per output root: ``train``, ``evaluate`` and ``optimize`` hold ``<output_root>/.bertcls.lock``
(PID, host, command, start time) while they run. Another worker of the same Optuna study may share it; a lock
whose holder is gone (its PID no longer runs on this host) is taken over with a warning."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from bertcls.runtime.errors import DataError
from bertcls.runtime.fileio import pid_alive
from bertcls.runtime.layout import RunLayout

logger = logging.getLogger(__name__)


def read_holder(path: Path) -> dict | None:
    """The lock's holder (None while it cannot be read: being written, or gone). A lock path that is not a file, or
    a file that is not a holder record, is an error naming it."""
    if path.exists() and not path.is_file():
        raise DataError(f"The lock {path} is not a file; remove it (nothing else uses that name).")
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not _valid_pid(holder.get("pid", 0)):
        raise DataError(f"The lock {path} does not hold a process record; if no bertcls command runs, delete it.")
    return holder


def _valid_pid(pid: object) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 <= pid < 2**31


def _try_create(path: Path, info: dict) -> bool:
    """Create the lock with its content in one step (write a temp file, hard-link it to the lock's name: the link
    fails if the lock exists, and a reader never sees an empty lock)."""
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _is_stale(holder: dict | None) -> bool:
    """A holder that is gone: its PID no longer runs on this host (or the file is unreadable)."""
    if holder is None:
        return True
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0)))


def _describe(holder: dict | None) -> str:
    holder = holder or {}
    return (
        f"bertcls {holder.get('command', '?')} (PID {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"since {holder.get('started', '?')})"
    )


@contextlib.contextmanager
def root_lock(root: Path, command: str, study: str | None = None) -> Iterator[None]:
    """Hold the output root for ``command``; a second writer gets one sentence naming the holder. Under torchrun
    rank 0 holds it for the whole launch."""
    from bertcls.runtime.distributed import world

    if not world().is_main:
        yield
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = RunLayout(root).lock
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "study": study,
    }
    for _ in range(3):
        if _try_create(path, info):
            break
        holder = read_holder(path)
        if study is not None and holder and holder.get("command") == "optimize" and holder.get("study") == study:
            yield  # another worker of the same study: share the root
            return
        if not _is_stale(holder):
            raise DataError(
                f"The output root {root} is in use by {_describe(holder)}; wait for it to finish or use another "
                f"--output-root (if that process is gone, delete {path})."
            )
        logger.warning("Taking over the lock of %s, which is no longer running.", _describe(holder or {}))
        if read_holder(path) == holder:  # not already taken over by another process in the meantime
            path.unlink(missing_ok=True)
    else:
        raise DataError(f"Could not take the lock {path}; try again.")
    try:
        yield
    finally:
        holder = read_holder(path)
        if holder and holder.get("pid") == info["pid"] and holder.get("started") == info["started"]:
            path.unlink(missing_ok=True)
