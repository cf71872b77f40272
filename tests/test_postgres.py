"""Two optimize workers against a real PostgreSQL server (started by .ci/run on loopback).

Set TEST_POSTGRES_URL (e.g. from `bash .ci/postgres.sh`) to run it; without a server it is skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import optuna
import pytest
from optuna.trial import TrialState

URL = os.environ.get("TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not URL, reason="no PostgreSQL server: TEST_POSTGRES_URL is unset (.ci/run starts one)"),
]


def test_two_workers_share_a_postgres_study(workspace, threads_small, tmp_path):
    from bertcls.config.sources import resolve_settings
    from bertcls.tuning.runner import run_optimize

    root = workspace / "tuning"
    run_optimize(
        resolve_settings(
            {
                "output_root": str(root),
                "data.data_file": str(threads_small),
                "model.max_seq_len": 128,
                "verbosity": 0,
                "model.num_epochs": 2,
                "tuning.study_name": "pg-warm",
                "tuning.n_trials": 1,
            }
        ).settings
    )  # fills the embedding cache
    name = f"pg-{uuid.uuid4().hex[:8]}"
    plain_url = URL.replace("postgresql+psycopg://", "postgresql://")  # the driver is picked automatically
    args = [
        sys.executable,
        "-m",
        "bertcls",
        "optimize",
        "--output-root",
        str(root),
        "--data-file",
        str(threads_small),
        "--study-name",
        name,
        "--storage",
        plain_url,
        "--n-trials",
        "5",
        "--num-epochs",
        "4",
        "--max-seq-len",
        "128",
        "--verbosity",
        "0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTCLS_")} | {"HF_HUB_OFFLINE": "1"}
    workers = [
        subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trials = optuna.load_study(study_name=name, storage=URL).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5 and len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 5
