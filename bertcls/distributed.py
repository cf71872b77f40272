"""Several processes under ``torchrun``: torch.distributed (gloo on CPU, nccl on CUDA). Without torchrun's
environment (``WORLD_SIZE`` unset or 1) every helper here is a no-op and runs are exactly as before."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from bertcls.errors import ConfigError

logger = logging.getLogger(__name__)
TIMEOUT = dt.timedelta(hours=6)  # rank 0 may train a head for a long time while the others wait


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> np.ndarray:
        """This rank's rows of ``count``: every size-th one, starting at its rank (disjoint, covering all)."""
        return np.arange(self.rank, count, self.size)


SINGLE = World()


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """The running process group's view of this process (SINGLE when not under torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device_type: str = "cpu") -> World:
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


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(value) -> list:
    """Every rank's ``value``, in rank order (just ``[value]`` outside torchrun)."""
    here = world()
    if not here.distributed:
        return [value]
    out = [None] * here.size
    dist.all_gather_object(out, value)
    return out


def broadcast_from_main(value):
    """Rank 0's ``value`` on every rank."""
    if not world().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(value: int, op) -> int:
    if not world().distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(tensor, op=op)
    return int(tensor.item())


def agree_min(value: int) -> int:
    """The smallest ``value`` over all ranks (e.g. a batch size one rank had to lower)."""
    return _agree(value, dist.ReduceOp.MIN)


def agree_sum(value: int) -> int:
    return _agree(value, dist.ReduceOp.SUM)


def agree_max(value: int) -> int:
    """The largest ``value`` over all ranks (e.g. 1 when any rank ran out of memory)."""
    return _agree(value, dist.ReduceOp.MAX)


def average_gradients(model: torch.nn.Module, rows: int) -> int:
    """Average the trainable parameters' gradients over the ranks, weighted by the rows each rank's (mean) loss
    covered, in one flattened all-reduce; a rank with no rows counts for nothing. Returns the rows of all ranks."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad * rows if p.grad is not None else torch.zeros_like(p) for p in params]
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    total = agree_sum(rows)
    flat /= max(1, total)
    for param, grad in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
        param.grad = grad
    return total


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def check_same_settings(settings_dump: dict) -> None:
    """Fail on every rank, with one sentence, when the ranks resolved different settings."""
    digest = hashlib.sha256(json.dumps(settings_dump, sort_keys=True, default=str).encode()).hexdigest()[:16]
    digests = all_gather_objects(digest)
    if len(set(digests)) > 1:
        ranks = ", ".join(f"rank {r}: {d}" for r, d in enumerate(digests))
        raise ConfigError(
            f"The ranks of this torchrun launch resolved different settings ({ranks}); give every rank "
            "the same flags, config file and BERTCLS_ variables."
        )


def gather_rows(local: np.ndarray, count: int, here: World) -> np.ndarray:
    """Reassemble rows computed as ``here.shard(count)`` on every rank into one array in row order (tensors padded
    to the largest share and all-gathered: no pickling of the data)."""
    longest = -(-count // here.size)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=torch.from_numpy(local[:0]).dtype)
    padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local))
    parts = [torch.empty_like(padded) for _ in range(here.size)]
    dist.all_gather(parts, padded)
    out = np.zeros((count, *local.shape[1:]), dtype=local.dtype)
    for rank, part in enumerate(parts):
        rows = np.arange(rank, count, here.size)
        out[rows] = part[: len(rows)].numpy()
    return out
