"""Fine-tuning under torchrun: one epoch with every rank in step. The ranks deal the epoch's rows between them,
agree on the batch size after every step, take each step together (or drop it together when one ran out of
memory) and average their gradients; the trainer hands its epoch over to this when the run is distributed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from bertcls.runtime.memory import is_out_of_memory

if TYPE_CHECKING:
    from bertcls.training.trainer import Trainer


class LockstepEpoch:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.parallel = trainer.parallel
        self.memory = trainer.memory

    def run(self) -> float:
        """The epoch's mean training loss over every rank's rows."""
        trainer = self.trainer
        losses, total = [], 0
        pending = self.shards()
        rows = sum(len(b) for b in pending)
        while pending:
            indices = pending.pop(0)
            value = self.step(indices)
            if value is None:  # some rank ran out of memory: every rank halves, and retries this batch in halves
                self.memory.on_out_of_memory()
                self.memory.batch_size = self.parallel.agree_min(self.memory.batch_size)
                pending[:0] = np.array_split(indices, 2)
                continue
            losses.append(value * len(indices))
            total += len(indices)
            trainer.trigger("on_batch_end", total, rows, value)
            self.agree_batch_size(pending)
            stop = trainer.stop_request is not None and trainer.stop_request.requested
            if self.parallel.broadcast(stop):
                trainer.state.interrupted = True
                break
        loss_sum, rows_seen = self.parallel.sum_floats([sum(losses), total])
        return float(loss_sum / max(1.0, rows_seen))

    def step(self, indices: np.ndarray) -> float | None:
        """One step on every rank together: forward and backward without DDP's own all-reduce (``no_sync``), then
        the ranks agree whether all of them managed; if one ran out of memory every rank drops the step (None),
        else the gradients are averaged across ranks and every rank takes the same step."""
        trainer = self.trainer
        trainer.apply_schedule()
        trainer.optimizer.zero_grad(set_to_none=True)
        failed, value = False, 0.0
        try:
            if len(indices):
                with self.parallel.no_sync(trainer.parts):
                    loss = trainer.loss(indices)
                    trainer.backward(loss)
                value = float(loss.detach())
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            failed = True
            trainer.optimizer.zero_grad(set_to_none=True)
        if self.parallel.reduce_boolean_decision(failed):
            return None
        trainer.state.samples_seen += self.parallel.average_gradients(trainer.model, len(indices))  # same on all
        trainer.update()
        return value

    def shards(self) -> list[np.ndarray]:
        """This rank's batches of the epoch, at the batch size every rank agrees on."""
        self.memory.batch_size = self.parallel.agree_min(self.memory.batch_size)
        return self.deal()

    def deal(self) -> list[np.ndarray]:
        """The seeded, length-grouped epoch order (the same on every rank) dealt out row by row, so the ranks'
        shards are disjoint and together are the whole epoch, cut into the same number of batches on every rank
        (DistributedDataParallel steps in lockstep)."""
        order = self.trainer.train_data.epoch_order(self.trainer.rng, self.memory.batch_size)
        mine, most = self.parallel.deal(order)
        steps = -(-most // self.memory.batch_size)
        return np.array_split(mine, steps) if steps else []  # a share may be empty: the rank still takes part

    def agree_batch_size(self, pending: list[np.ndarray]) -> None:
        """After a step: the memory manager's reading on every rank, the smallest batch size wins, and the next
        batch is cut into as many pieces as the rank that needs most (so the ranks stay in lockstep)."""
        self.memory.after_step()
        self.memory.batch_size = self.parallel.agree_min(self.memory.batch_size)
        if not pending:
            self.parallel.agree_max(0)  # every rank takes part in the same collectives
            return
        pieces = self.parallel.agree_max(-(-len(pending[0]) // self.memory.batch_size))
        if pieces > 1:
            pending[:1] = np.array_split(pending[0], pieces)
