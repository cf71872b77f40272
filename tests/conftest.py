"""Shared fixtures: small BBC subsets, a trained frozen model, and a CLI runner that returns exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BBC = REPO.parent / "shared" / "data" / "bbc-text.csv"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test runs in its own folder (so the repo's config.yml is not picked up) with no BERTCLS_ variables."""
    for name in list(os.environ):
        if name.startswith("BERTCLS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def bbc_frame() -> pd.DataFrame:
    if not BBC.is_file():
        pytest.fail(f"the BBC data is expected at {BBC}")
    return pd.read_csv(BBC, dtype=str, keep_default_na=False)


def bbc_subset(per_class: int, seed: int = 0) -> pd.DataFrame:
    frame = bbc_frame()
    picked = frame.groupby("category").sample(per_class, random_state=seed).index
    return frame.loc[sorted(picked)].reset_index(drop=True)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """One output root for the session, so the embedding cache is shared between tests."""
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def bbc_small(workspace) -> Path:
    """300 BBC articles, 60 per class."""
    path = workspace / "bbc300.csv"
    bbc_subset(60).to_csv(path, index=False)
    return path


@pytest.fixture
def cli(capsys):
    """Run ``bertcls`` in-process; returns (exit code, stdout, stderr)."""
    from bertcls.cli.app import run

    def invoke(*args: str):
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture(scope="session")
def trained_model(workspace, bbc_small) -> Path:
    """A frozen-encoder model trained once on the 200-article subset; returns its output root."""
    from bertcls.config_sources import resolve_settings
    from bertcls.workflow import run_training

    root = workspace / "trained"
    with pytest.MonkeyPatch.context() as patch:  # session fixtures run before the per-test chdir
        patch.chdir(workspace)
        settings = resolve_settings(
            {"output_root": str(root), "data.data_file": str(bbc_small), "model.max_seq_len": 128, "verbosity": 0}
        ).settings
        run_training(settings)
    return root
