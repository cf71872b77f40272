"""Every path bertcls names under an output root, in one place.

```
<output_root>/
  .bertcls.lock                 one writer at a time
  data/{train,val,test}.csv     the rows the model was trained, validated and tested on
  best_trials/best_model.pt     the model (and best_model_<study>_exp<N>.pt per optimize run)
  best_trials/MODEL_CARD.md     the model card of best_model.pt
  checkpoints/last_state.pt     the state `train --resume` goes on from (removed when a run finishes)
  bert_encoder/                 the default encoder, copied once
  cache/                        embedding caches, one folder per encoder, length, pooling and precision
  optuna/<study>.db             a study's SQLite storage; optuna/<study>/trials/ its trial checkpoints
  evaluation_results/           evaluate's report, plots and CSVs
  export/                       the ONNX export
  predictions/                  predict's output when --output-file is a bare name
  explanations/                 explain's CSV and page when --output-file is a bare name
  suggestions/                  suggest's to_label.csv when --output-file is a bare name
  mlruns/                       MLflow's default local store (mlflow.db, artifacts/) with --track mlflow
  tensorboard/                  TensorBoard event folders, one per run, with --track tensorboard
  logs/<command>_<stamp>_<pid>.log
```
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from bertcls.runtime.fileio import remove_stale_staging

logger = logging.getLogger(__name__)

BEST_MODEL = "best_model.pt"
MODEL_CARD = "MODEL_CARD.md"
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str from the settings or a flag becomes a Path

    @property
    def lock(self) -> Path:
        return self.root / ".bertcls.lock"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split_file(self, name: str) -> Path:
        """``data/<name>.csv`` for a split name (train, val or test)."""
        return self.data_dir / f"{name}.csv"

    @property
    def best_dir(self) -> Path:
        return self.root / "best_trials"

    @property
    def best_model(self) -> Path:
        return self.best_dir / BEST_MODEL

    @property
    def model_card(self) -> Path:
        return self.best_dir / MODEL_CARD

    def checkpoint(self, name: str | None) -> Path:
        """``--best-model`` as given: a bare file name that does not exist here resolves under ``best_trials/``."""
        path = Path(name or BEST_MODEL)
        if len(path.parts) == 1 and not path.exists():
            return self.best_dir / path
        return path

    def study_best_model(self, study_name: str, experiment: int) -> Path:
        return self.best_dir / f"best_model_{study_name}_exp{experiment}.pt"

    @property
    def resume_state(self) -> Path:
        return self.root / "checkpoints" / "last_state.pt"

    @property
    def encoder_dir(self) -> Path:
        return self.root / "bert_encoder"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def optuna_dir(self) -> Path:
        return self.root / "optuna"

    def study_db(self, study_name: str) -> Path:
        return self.optuna_dir / f"{study_name}.db"

    def study_dir(self, study_name: str) -> Path:
        return self.optuna_dir / study_name

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation_results"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def explanations_dir(self) -> Path:
        return self.root / "explanations"

    @property
    def suggestions_dir(self) -> Path:
        return self.root / "suggestions"

    @property
    def mlruns_dir(self) -> Path:
        return self.root / "mlruns"

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log_file(self, command: str) -> Path:
        """``logs/<command>_<YYYYmmdd_HHMMSS>_<pid>.log``: two commands started in the same second never share one."""
        stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        return self.logs_dir / f"{command}_{stamp}_{os.getpid()}.log"

    @staticmethod
    def staging_for(final: Path) -> Path:
        """A hidden sibling of ``final`` to build a folder in before it replaces ``final`` in one rename; its name
        holds this host and process, so that the staging folders of killed processes are removed here."""
        if remove_stale_staging(final):
            logger.info("Removed staging folders of %s left by processes that died", final)
        return final.with_name(f".{final.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
