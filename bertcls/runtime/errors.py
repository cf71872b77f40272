"""User-facing errors: the CLI turns these into one sentence and exit code 2."""

from __future__ import annotations

import errno
import re
import socket


class BertclsError(Exception):
    """A problem with the user's input, files or configuration (not a bug)."""


class ConfigError(BertclsError):
    """The configuration is invalid; ``problems`` lists every issue found."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


class DataError(BertclsError):
    """The input data failed a check."""


class CheckpointError(BertclsError):
    """A checkpoint is missing, corrupt, unsafe or incompatible."""


class TrainingDiverged(BertclsError):
    """The training loss became infinite or NaN: the weights are no longer numbers."""


# errno -> what to do about it, for the file-system errors a command can meet (mostly while writing)
OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space (or choose another --output-root) and run again",
    errno.EDQUOT: "free some space (or choose another --output-root) and run again",
    errno.EFBIG: "the file is larger than this system allows; choose another --output-root",
    errno.EROFS: "choose a writable --output-root or --output-file",
    errno.EACCES: "check that path's permissions (or choose another --output-root or --output-file)",
    errno.EPERM: "check that path's permissions (or choose another --output-root or --output-file)",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EEXIST: "a file is in the way of a folder there; choose another path",
    errno.EISDIR: "that path is a folder; name a file",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def written_target(path: str) -> str:
    """The file or folder a temp file or staging folder of this host stands for (``.best_model.pt.<host>.<pid>.
    <random>.tmp`` is ``best_model.pt``; ``.export.<host>.<pid>.<random>`` is ``export``), else ``path``."""
    pattern = rf"(?P<folder>^|.*/)\.(?P<name>[^/]+)\.{re.escape(socket.gethostname())}\.\d+(\.[^/.]+)?(\.tmp)?$"
    match = re.match(pattern, path)
    return match["folder"] + match["name"] if match else path


class FileSystemError(BertclsError):
    """A file could not be read or written (a full disk, a read-only folder, a file where a folder should be)."""

    @classmethod
    def from_os_error(cls, exc: OSError) -> FileSystemError:
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = written_target(str(exc.filename)) if exc.filename is not None else None
        hint = OS_ERROR_HINTS.get(exc.errno or 0, "check the path and run again")
        place = f" at {where}" if where else ""
        return cls(f"{reason}{place}; {hint}. Files written before are unchanged.")
