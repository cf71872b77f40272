"""The parallel strategy: one process, or several under ``torchrun`` (torch.distributed, gloo on CPU, nccl on
CUDA). Without torchrun's environment (``WORLD_SIZE`` unset or 1) the strategy is ``SINGLE``, whose collectives
are no-ops, and runs are exactly as before. Rank questions are answered here and nowhere else."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from bertcls.runtime.errors import ConfigError

logger = logging.getLogger(__name__)
Rows = TypeVar("Rows", np.ndarray, tuple[np.ndarray, np.ndarray])
TIMEOUT = dt.timedelta(hours=6)  # rank 0 may train a head for a long time while the others wait


@dataclass(frozen=True)
class Parallel:
    """The parallel strategy: who this process is among the processes of one launch, and every question that needs
    the others. One process (``SINGLE``: every collective is a no-op and returns its input) or the ranks of a
    torchrun launch; code elsewhere asks this object, never ``torch.distributed`` or a rank number."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and decides (rank 0)."""
        return self.rank == 0

    def shard(self, count: int) -> np.ndarray:
        """This rank's rows of ``count``: every size-th one, starting at its rank (disjoint, covering all)."""
        return np.arange(self.rank, count, self.size)

    def deal(self, order: np.ndarray) -> tuple[np.ndarray, int]:
        """This rank's rows of an epoch ``order`` dealt out row by row, and the most rows any rank gets (rank 0's)."""
        return order[self.rank :: self.size], len(order[0 :: self.size])

    def map_sharded(
        self, compute: Callable[[Any], Rows], items: Any, take: Callable[[Any, np.ndarray], Any] | None = None
    ) -> Rows:
        """``compute(items)`` in input order (an array of rows, or a tuple of them); under torchrun each rank
        computes its share (``take(items, rows)``, a list of those items by default) and every rank gets all the
        rows back."""
        if not self.distributed:
            return compute(items)
        rows = self.shard(len(items))
        mine = take(items, rows) if take is not None else [items[i] for i in rows]
        local = compute(mine)
        if isinstance(local, tuple):
            first, second = (self.gather_rows(part, len(items)) for part in local)
            return first, second
        return self.gather_rows(local, len(items))

    def gather_rows(self, local: np.ndarray, count: int) -> np.ndarray:
        """Reassemble rows computed as ``shard(count)`` on every rank into one array in row order (tensors padded
        to the largest share and all-gathered: no pickling of the data)."""
        longest = -(-count // self.size)
        padded = torch.zeros((longest, *local.shape[1:]), dtype=torch.from_numpy(local[:0]).dtype)
        padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local))
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        out = np.zeros((count, *local.shape[1:]), dtype=local.dtype)
        for rank, part in enumerate(parts):
            rows = np.arange(rank, count, self.size)
            out[rows] = part[: len(rows)].numpy()
        return out

    def all_gather_objects(self, value) -> list:
        """Every rank's ``value``, in rank order."""
        if not self.distributed:
            return [value]
        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _agree(self, value: int, op) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(tensor, op=op)
        return int(tensor.item())

    def agree_min(self, value: int) -> int:
        """The smallest ``value`` over all ranks (e.g. a batch size one rank had to lower)."""
        return self._agree(value, dist.ReduceOp.MIN)

    def agree_max(self, value: int) -> int:
        """The largest ``value`` over all ranks (e.g. 1 when any rank ran out of memory)."""
        return self._agree(value, dist.ReduceOp.MAX)

    def agree_sum(self, value: int) -> int:
        return self._agree(value, dist.ReduceOp.SUM)

    def reduce_boolean_decision(self, decision: bool) -> bool:  # noqa: FBT001 - Lightning's signature
        """True on every rank when any rank decided so (Lightning's ``Strategy.reduce_boolean_decision``)."""
        return bool(self.agree_max(int(decision)))

    def sum_floats(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def average_gradients(self, model: torch.nn.Module, rows: int) -> int:
        """Average the trainable parameters' gradients over the ranks, weighted by the rows each rank's (mean) loss
        covered, in one flattened all-reduce; a rank with no rows counts for nothing. Returns the rows of all
        ranks."""
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad * rows if p.grad is not None else torch.zeros_like(p) for p in params]
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        total = self.agree_sum(rows)
        flat /= max(1, total)
        for param, grad in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
            param.grad = grad
        return total

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``module`` as the ranks train it together: under torchrun wrapped in DistributedDataParallel (no buffer
        broadcast: a forward pass then holds no collective, so a rank may skip an empty share); as it is alone."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def no_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Forward and backward without DistributedDataParallel's own gradient all-reduce (the ranks average the
        gradients themselves, after agreeing that every rank's step succeeded)."""
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Parallel()


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> Parallel:
    """The strategy of this process: the running process group's view of it under torchrun, else ``SINGLE``."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Parallel(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device_type: str = "cpu") -> Parallel:
    """Join the process group torchrun describes (once); gloo on CPU, nccl on CUDA."""
    if not launched():
        return SINGLE
    if not dist.is_initialized():
        # on GPUs the small agreements (flags, batch sizes, gathered rows) are CPU tensors: gloo carries those
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return world()


def shutdown(*, together: bool = False) -> None:
    """Leave the process group; ``together``: once every rank has come this far. The wait polls, so that Ctrl-C
    still reaches Python, and ends when a peer fails (its error says why) or the user interrupts: leaving cannot
    fail or hang a command whose work is done."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if together:
            arrived = dist.barrier(async_op=True)
            while arrived is not None and not arrived.is_completed():
                time.sleep(0.05)
            if arrived is not None:
                arrived.wait()
    except (RuntimeError, KeyboardInterrupt) as exc:  # a peer failed and left, or Ctrl-C: nothing to wait for
        logger.debug("Leaving without the other ranks: %r", exc)
    finally:
        dist.destroy_process_group()


def check_same_settings(settings_dump: dict) -> None:
    """Fail on every rank, with one sentence, when the ranks resolved different settings."""
    digest = hashlib.sha256(json.dumps(settings_dump, sort_keys=True, default=str).encode()).hexdigest()[:16]
    digests = world().all_gather_objects(digest)
    if len(set(digests)) > 1:
        ranks = ", ".join(f"rank {r}: {d}" for r, d in enumerate(digests))
        raise ConfigError(
            f"The ranks of this torchrun launch resolved different settings ({ranks}); give every rank "
            "the same flags, config file and BERTCLS_ variables."
        )
