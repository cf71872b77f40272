"""Optuna storage and study set-up: SQLite by default, journal files, or any database URL."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import TrialState

from bertcls.config.settings import TuningSection
from bertcls.runtime.errors import BertclsError
from bertcls.runtime.interrupts import Interrupted
from bertcls.runtime.layout import RunLayout
from bertcls.runtime.redaction import redact

Direction = Literal["minimize", "maximize"]

try:
    import fcntl
except ImportError:  # Windows: fall back to retries
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
JOURNAL_PREFIX = "journal:"


def default_storage_url(output_root: Path, study_name: str) -> str:
    path = RunLayout(output_root).study_db(study_name).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(url: str, cfg: TuningSection) -> optuna.storages.BaseStorage:
    """``journal:PATH`` is a journal file (several processes on one disk); anything else is a database URL
    (SQLite, PostgreSQL, MySQL) with heartbeats so that trials of a dead worker are marked failed."""
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX) :].removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return _rdb_storage(with_available_driver(url), cfg)
    except ImportError as exc:
        raise BertclsError(
            f"The storage {url.split(':', 1)[0]} needs a driver that is not installed ({exc.name}); "
            "for PostgreSQL install bertcls[postgres]."
        ) from None
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        raise BertclsError(
            f"Cannot open the Optuna storage {redact(url)}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None


@contextlib.contextmanager
def _sqlite_creation_lock(url: str):
    """Serialise schema creation of one SQLite file across processes (a lock file beside it)."""
    if not url.startswith("sqlite:///") or fcntl is None:
        yield
        return
    lock_path = Path(url[len("sqlite:///") :] + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rdb_storage(url: str, cfg: TuningSection, attempts: int = 8) -> optuna.storages.RDBStorage:
    """RDBStorage, retried while another worker is creating the same schema (optuna#5385)."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with _sqlite_creation_lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=cfg.heartbeat_interval,
                    grace_period=cfg.grace_period,
                )
        except Exception as exc:
            racing = any(p in str(exc) for p in ("already exists", "locked", "duplicate key", "UNIQUE constraint"))
            if not racing or attempt == attempts - 1:
                raise
            logger.debug("Storage is being created by another worker (%s); retrying", str(exc).splitlines()[0])
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def with_available_driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; use psycopg 3 (the ``postgres`` extra) when only it is
    installed."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    direction: Direction = "maximize",
) -> optuna.Study:
    """Create the study or load it if it exists (resume), with a median pruner."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    try:
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it at the same moment
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def count_trials(study: optuna.Study, states=FINISHED + (TrialState.RUNNING,), exclude: int | None = None) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number != exclude)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)
