"""Atomic file writes: a temp file in the same folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def file_mode(target: Path) -> int:
    """The mode a new file gets under the user's umask (0644 for the usual 022), or the existing file's."""
    if target.exists():
        return target.stat().st_mode & 0o777
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def left_by_dead_processes(target: Path, suffix: str = "") -> list[Path]:
    """The hidden siblings ``.<name>.<host>.<pid>.…<suffix>`` of ``target`` whose process of this host is gone
    (another host's are never listed): what a killed process left half-written."""
    prefix = f".{target.name}.{socket.gethostname()}."
    found = []
    for path in target.parent.glob(f"{glob.escape(prefix)}*{suffix}"):
        pid = path.name[len(prefix) :].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            found.append(path)
    return found


def remove_stale_temps(target: Path) -> int:
    """Delete temp files of ``target`` left by processes of this host that died mid-write."""
    stale = [p for p in left_by_dead_processes(target, ".tmp") if p.is_file()]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def remove_stale_staging(final: Path) -> int:
    """Delete the staging folders of ``final`` left by dead processes of this host (``kill -9`` during
    ``evaluate`` or ``export``)."""
    stale = [p for p in left_by_dead_processes(final) if p.is_dir()]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it replaces ``target`` (with the mode the user's umask
    gives), on error it is removed. Temp files that a killed process left for the same target are cleaned up."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    mode = file_mode(target)
    prefix = f".{target.name}.{socket.gethostname()}.{os.getpid()}."
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_dir(staging: Path, final: Path) -> Path:
    """Put the finished folder ``staging`` in the place of ``final`` (renames only: ``final`` is never half
    written), then delete the old one."""
    old = final.with_name(f".{final.name}.old.{staging.name.rsplit('.', 1)[-1]}")
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def write_bytes_atomic(target: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` through a temp file: a full disk is an ``OSError`` naming the file (serialisers that write
    files themselves report it as other errors, or as a short file), and ``target`` stays as it was."""
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    return Path(target)


def save_torch_atomic(payload: object, target: str | Path) -> Path:
    """``torch.save`` into memory, then :func:`write_bytes_atomic` (torch's own writer turns a full disk into an
    opaque RuntimeError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes_atomic(target, buffer.getbuffer())


def write_text_atomic(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_csv_atomic(target: str | Path, frame) -> Path:
    """Write a pandas frame as CSV atomically."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(target)
