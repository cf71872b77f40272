"""The precision guard's verdicts, remembered per machine: one measurement per encoder (by fingerprint), reduced
precision, sequence length, pooling and processor model, kept in a user-level cache so that a new output root on
the same machine does not pay for it again.

The folder is ``$BERTCLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/bertcls``, else ``~/.cache/bertcls``; the file
``guard_verdicts.json`` is safe to delete (the next run measures again). A file that cannot be read is ignored
with a warning."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from pydantic import ValidationError

from bertcls.runtime.fileio import write_text_atomic
from bertcls.runtime.precision import PrecisionCheck

logger = logging.getLogger(__name__)

VERDICTS_FILE = "guard_verdicts.json"
# How embedding computes at a reduced precision; a verdict measured another way does not apply (verdicts without it
# were measured with the fp32 weights under autocast).
REDUCED_COMPUTE = "weights held in the reduced dtype"


def user_cache_dir() -> Path:
    explicit = os.environ.get("BERTCLS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "bertcls"


def processor_model(device: torch.device) -> str:
    """What the verdict depends on besides the encoder: the GPU's name, or the CPU's model name and vector flags."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return device.type
    model, flags = "unknown CPU", ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    return f"cpu:{model} [{flags}] {torch.backends.cpu.get_cpu_capability()}"


def verdict_key(fingerprint: str, precision: str, max_seq_len: int, pooling: str, device: torch.device) -> str:
    payload = json.dumps([fingerprint, precision, max_seq_len, pooling, processor_model(device), REDUCED_COMPUTE])
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=12).hexdigest()


class MachineVerdicts:
    """``guard_verdicts.json`` in :func:`user_cache_dir`: key -> :class:`PrecisionCheck`."""

    def __init__(self, folder: Path | None = None):
        self.path = (folder or user_cache_dir()) / VERDICTS_FILE

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a mapping")
            return data
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring the precision guard's cache %s (%s); the guard measures again.", self.path, exc)
            return {}

    def get(self, key: str) -> PrecisionCheck | None:
        entry = self._read().get(key)
        if entry is None:
            return None
        try:
            return PrecisionCheck.model_validate(entry)
        except ValidationError:
            logger.warning("Ignoring a damaged entry of the precision guard's cache %s.", self.path)
            return None

    def put(self, key: str, check: PrecisionCheck) -> None:
        """Remember a verdict (a folder that cannot be written only costs the next run a measurement)."""
        data = self._read()
        data[key] = check.model_dump(mode="json")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(data, indent=1))
        except OSError as exc:
            logger.warning("Cannot write the precision guard's cache %s (%s).", self.path, exc.strerror)
