"""Per-command debug log files under ``<output_root>/logs/``."""

from __future__ import annotations

import logging
from pathlib import Path

from bertcls.runtime.layout import RunLayout
from bertcls.runtime.redaction import RedactingFilter

VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
logger = logging.getLogger(__name__)
NOISY_LIBRARIES = (
    "transformers",
    "sentence_transformers",
    "urllib3",
    "filelock",
    "matplotlib",
    "PIL",
    "optuna",
    "huggingface_hub",
)


def attach_file_log(output_root: Path, command: str) -> Path | None:
    """Log everything from bertcls at debug level to a timestamped file; returns its path, or None when the folder
    cannot be written (a read-only output root still serves ``predict`` and ``inspect``: the log goes to the
    console only, with a warning)."""
    path = RunLayout(output_root).log_file(command)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        logger.warning("Cannot write a log file in %s (%s); logging to the console only.", path.parent, exc.strerror)
        return None
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("bertcls-file")
    handler.addFilter(RedactingFilter())
    package = logging.getLogger("bertcls")
    for old in [h for h in package.handlers if h.get_name() == "bertcls-file"]:
        package.removeHandler(old)
        old.close()
    package.addHandler(handler)
    package.setLevel(logging.DEBUG)
    return path
