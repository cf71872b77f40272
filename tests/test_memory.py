"""The memory manager on injected memory readings, and out-of-memory recovery inside a real training step."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bertcls.config.settings import (
    ClassifierSection,
    EarlyStoppingSection,
    MemorySection,
    ModelSection,
    OptimizerSection,
)
from bertcls.inference.batches import EmbeddingBatches
from bertcls.model.network import HeadSpec, MLPHead, TextClassifier
from bertcls.runtime.memory import USER_ALLOCATOR_SETTINGS, MemoryManager, is_glibc
from bertcls.task import SingleLabel
from bertcls.training.trainer import Trainer, TrainingPlan


class Readings:
    """A memory probe that returns scripted values."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_halves_above_threshold_down_to_the_floor():
    manager = MemoryManager(MemorySection(), 64, Readings([0.9]))
    sizes = [manager.after_step() for _ in range(5)]
    assert sizes == [32, 16, 8, 8, 8]
    assert manager.changes[0][:2] == (64, 32) and "above 85%" in manager.changes[0][2]


def test_grows_back_after_calm_steps_but_not_past_the_request():
    cfg = MemorySection(grow_after_steps=2)
    manager = MemoryManager(cfg, 32, Readings([0.9, 0.9, 0.1]))
    sizes = [manager.after_step() for _ in range(8)]
    assert sizes == [16, 8, 8, 16, 16, 32, 32, 32]


def test_middle_band_holds_steady():
    manager = MemoryManager(MemorySection(grow_after_steps=1), 16, Readings([0.7]))
    assert [manager.after_step() for _ in range(3)] == [16, 16, 16]


def test_out_of_memory_at_the_floor_raises():
    manager = MemoryManager(MemorySection(), 8, Readings([0.1]))
    with pytest.raises(MemoryError):
        manager.on_out_of_memory()


class FlakyBatches(EmbeddingBatches):
    """Raises an out-of-memory error for any batch larger than ``limit`` rows."""

    def __init__(self, embeddings, labels, limit):
        super().__init__(embeddings, labels)
        self.limit = limit
        self.failures = 0

    def batch(self, indices, device):
        if len(indices) > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().batch(indices, device)


def test_trainer_recovers_from_out_of_memory_by_halving():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 8)).astype(np.float32), rng.integers(0, 3, size=96)
    train = FlakyBatches(x, y, limit=16)
    cfg = ClassifierSection(bert_hidden_size=8, hidden_dims=[8])
    spec = HeadSpec.from_config(cfg, in_dim=8, num_classes=3, task=SingleLabel())
    model = TextClassifier(MLPHead(spec))
    memory = MemoryManager(MemorySection(), 64, Readings([0.5]))
    trainer = Trainer(
        model,
        train,
        EmbeddingBatches(x, y),
        TrainingPlan(ModelSection(num_epochs=2, batch_size=64), OptimizerSection(), EarlyStoppingSection()),
        memory,
        torch.device("cpu"),
    )
    result = trainer.fit()
    assert len(result.history) == 2 and train.failures == 2 and memory.batch_size == 16
    assert [c[:2] for c in memory.changes] == [(64, 32), (32, 16)]


ALLOCATING = """
import resource, sys
import numpy as np
from bertcls.runtime.memory import reuse_freed_memory
if sys.argv[1] == "keep":
    assert reuse_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rng = np.random.default_rng(0)
for _ in range(40):  # blocks of 1.6 to 16 MB, written and freed, as a training step's activations are
    blocks = [np.ones(int(n)) for n in rng.integers(200_000, 2_000_000, 6)]
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not is_glibc(), reason="keeping freed memory is a glibc setting")
def test_keeping_freed_memory_cuts_the_page_faults_of_repeated_large_blocks():
    env = {k: v for k, v in os.environ.items() if k not in USER_ALLOCATOR_SETTINGS}
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", ALLOCATING, mode], capture_output=True, text=True,
                                 check=True, env=env).stdout)
        for mode in ("default", "keep")
    }  # fmt: skip
    assert faults["keep"] * 3 < faults["default"], faults


def test_an_allocator_set_through_the_environment_is_left_alone():
    script = "from bertcls.runtime.memory import reuse_freed_memory; print(reuse_freed_memory())"
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == "False"
