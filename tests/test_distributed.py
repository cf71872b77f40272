"""torchrun on CPU (gloo, one thread per rank): DDP fine-tuning, sharded embedding, sharded predict, and settings
that differ between ranks. Plain runs are covered by every other test (no torchrun variables, nothing changes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.config.settings import EncoderSection
from bertcls.features.service import EmbeddingService
from bertcls.model.checkpoint import load_checkpoint
from bertcls.runtime.distributed import Parallel
from tests.conftest import thread_subset


def torchrun_command(*target: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node 2``: the launch's store on a free port torchrun picks itself (not the
    fixed default, 29500, which a rank of the previous launch may still hold)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *target]


def torchrun(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("BERTCLS_")}
    command = torchrun_command("-m", "bertcls", *map(str, args))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "threads100.csv"
    thread_subset(20, seed=4).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_epoch_shards_are_disjoint_and_cover_the_epoch(workspace, small_csv):
    from bertcls.config.sources import resolve_settings
    from bertcls.runtime.distributed import SINGLE
    from bertcls.training.callbacks import WorkflowHooks
    from bertcls.training.lockstep import LockstepEpoch
    from bertcls.training.preparation import prepare
    from bertcls.training.setup import make_trainer

    settings = resolve_settings({"output_root": str(workspace / "shards"), "data.data_file": str(small_csv)}).settings
    run = prepare(settings, WorkflowHooks())
    shards = []
    for rank in (0, 1):
        trainer = make_trainer(settings, run.features, run.service, len(run.names), SINGLE)
        trainer.parallel = Parallel(rank, 2)  # the dealing only; no process group is needed for it
        trainer.memory.batch_size = 7
        batches = LockstepEpoch(trainer).deal()
        shards.append((batches, np.concatenate(batches)))
    (batches0, rows0), (batches1, rows1) = shards
    assert len(batches0) == len(batches1)  # lockstep
    assert not set(rows0) & set(rows1)
    assert sorted(np.concatenate([rows0, rows1])) == list(range(len(run.features.sources["train"])))


@pytest.mark.slow
def test_frozen_train_embeds_sharded_and_predict_matches_one_process(workspace, small_csv, tmp_path):
    root = tmp_path / "frozen"
    done = torchrun(
        "train", "--output-root", root, "--data-file", small_csv, "--num-epochs", "3", "--max-seq-len", "48",
        "--precision", "fp32", "--track", "tensorboard", "--verbosity", "0", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (root / "best_trials").iterdir()) == ["MODEL_CARD.md", "best_model.pt"]
    assert len(list((root / "tensorboard").iterdir())) == 1  # rank 0 alone tracks
    texts = pd.read_csv(small_csv).text.tolist()
    service = EmbeddingService(EncoderSection(), 48, root, torch.device("cpu"), precision="fp32")
    cached, _ = service.embed(texts)  # from the cache rank 0 wrote
    assert service.stats.misses == 0 and not service.encoder_loaded
    fresh = EmbeddingService(EncoderSection(), 48, tmp_path / "single", torch.device("cpu"), precision="fp32")
    assert np.allclose(cached, fresh.embed(texts)[0], atol=1e-5)
    done = torchrun(
        "predict", "--output-root", root, "--data-file", small_csv, "--output-file", "two.csv", "--verbosity", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    from bertcls.cli.app import run

    assert run(["predict", "--output-root", str(root), "--data-file", str(small_csv), "--output-file", "one.csv"]) == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # rank 1's discarded output never replaced /dev/null
    two, one = (pd.read_csv(root / "predictions" / name) for name in ("two.csv", "one.csv"))
    assert list(two.text) == list(one.text) and (two.predicted_label == one.predicted_label).all()
    assert np.allclose(two.confidence, one.confidence, atol=1e-5)


@pytest.mark.slow
def test_fine_tuning_with_two_ranks_writes_one_checkpoint_and_learns(small_csv, tmp_path):
    root = tmp_path / "ddp"
    done = torchrun(
        "train", "--output-root", root, "--data-file", small_csv, "--fine-tune", "--num-epochs", "2",
        "--max-seq-len", "32", "--batch-size", "8", "--verbosity", "0", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (root / "best_trials").iterdir()) == ["MODEL_CARD.md", "best_model.pt"]
    assert len(list((root / "logs").glob("train_*.log"))) == 1  # rank 0 alone logs
    ckpt = load_checkpoint(root / "best_trials" / "best_model.pt")
    history = ckpt.meta.history
    assert ckpt.fine_tuned and len(history) == 2 and history[1].train_loss < history[0].train_loss


@pytest.mark.slow
def test_ranks_with_different_settings_fail_on_every_rank(small_csv, tmp_path):
    (tmp_path / "config.yml").write_text("output_root: runs/rank_${LOCAL_RANK}\n")
    done = torchrun("train", "--data-file", small_csv, "--num-epochs", "1", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("Error: The ranks of this torchrun launch resolved different settings") == 2


OOM_ON_RANK_1 = """
import os, sys, torch
sys.path.insert(0, {repo!r})
import bertcls.training.trainer as training

original, calls = training.Trainer.loss, []


def flaky(self, indices):
    calls.append(len(indices))
    if os.environ["RANK"] == "1" and len(calls) == 2:
        raise torch.OutOfMemoryError("out of memory (injected on rank 1)")
    return original(self, indices)


training.Trainer.loss = flaky
from bertcls.cli.app import run

sys.exit(run(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_out_of_memory_step_on_one_rank_makes_every_rank_halve(small_csv, tmp_path):
    script = tmp_path / "oom.py"
    script.write_text(OOM_ON_RANK_1.format(repo=str(__import__("pathlib").Path(__file__).resolve().parents[1])))
    root = tmp_path / "oom"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = torchrun_command(str(script), "train")
    command += ["--output-root", str(root), "--data-file", str(small_csv), "--fine-tune", "--num-epochs", "1"]
    command += ["--max-seq-len", "32", "--batch-size", "16", "--verbosity", "0"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = next((root / "logs").glob("train_*.log")).read_text()
    assert "Batch size 16 -> 8 (out-of-memory error in a step)" in log  # rank 0 halved for rank 1's failure
    ckpt = load_checkpoint(root / "best_trials" / "best_model.pt")
    assert ckpt.meta.history[0].batch_size == 8


def test_a_command_leaves_the_process_group_before_exit(workspace):
    """Left to interpreter finalisation, gloo's threads can abort a finished rank (SIGABRT in CI)."""
    import torch.distributed as dist

    from bertcls.cli.app import run

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert run(["config", "validate"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
