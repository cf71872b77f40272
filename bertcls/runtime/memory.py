"""The memory manager: the batch size adapts to memory use, and an out-of-memory step is retried smaller; and the
C allocator's setting that lets CPU fine-tuning reuse freed memory."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable

import psutil
import torch

from bertcls.config.settings import MemorySection

logger = logging.getLogger(__name__)
MemoryProbe = Callable[[], float]
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_BLOCKS_UP_TO = 32 << 20  # blocks up to 32 MiB come from the heap (the ceiling of glibc's own sliding threshold)
KEEP_FREED_UP_TO = 1 << 30  # freed memory at the top of a heap (per allocator arena), up to 1 GiB, stays for reuse
USER_ALLOCATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def is_glibc() -> bool:
    """Whether this process's C library is glibc (``mallopt``'s parameters below are glibc's)."""
    if "CS_GNU_LIBC_VERSION" not in getattr(os, "confstr_names", {}):
        return False
    return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


@functools.cache
def reuse_freed_memory() -> bool:
    """CPU fine-tuning allocates and frees activation blocks of a few MB every step. With glibc's defaults many of
    them still come from fresh mappings or are trimmed off the heap when freed, so each step pays their pages again
    as faults. Keep them in the heap instead (process-wide, once): fp32 fine-tuning measured 8% to 16% more
    samples/s (README). The memory kept counts in this process's RSS, which the memory manager reads. False where
    the C library is not glibc, refuses, or the user set its allocator through the environment."""
    if any(name in os.environ for name in USER_ALLOCATOR_SETTINGS) or not is_glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    kept = libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO) == 1
    kept = libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_UP_TO) == 1 and kept
    logger.debug("Freed memory kept in the heap for reuse: %s", kept)
    return kept


def system_memory_fraction() -> float:
    """This process's resident memory against what it could use (its RSS plus what is still available)."""
    rss = psutil.Process().memory_info().rss
    return rss / (rss + psutil.virtual_memory().available)


def cuda_memory_fraction() -> float:
    free, total = torch.cuda.mem_get_info()
    return 1.0 - free / total


def default_probe(device: torch.device) -> MemoryProbe:
    return cuda_memory_fraction if device.type == "cuda" else system_memory_fraction


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class MemoryManager:
    """Halves the batch above ``threshold`` (not below ``min_batch_size``); after calm steps it grows back
    towards the requested size (never above it or ``max_batch_size``)."""

    def __init__(self, cfg: MemorySection, batch_size: int, probe: MemoryProbe):
        self.cfg = cfg
        self.probe = probe
        self.batch_size = max(cfg.min_batch_size, min(cfg.max_batch_size, batch_size)) if cfg.enabled else batch_size
        if self.batch_size != batch_size:
            logger.warning(
                "Batch size %d is outside memory.min_batch_size %d and memory.max_batch_size %d: training at %d "
                "(widen those bounds, or set memory.enabled: false, to train at %d).",
                batch_size,
                cfg.min_batch_size,
                cfg.max_batch_size,
                self.batch_size,
                batch_size,
            )
        self.ceiling = self.batch_size
        self.calm_steps = 0
        self.changes: list[tuple[int, int, str]] = []

    def _set(self, new_size: int, reason: str) -> None:
        if new_size != self.batch_size:
            logger.info("Batch size %d -> %d (%s)", self.batch_size, new_size, reason)
            self.changes.append((self.batch_size, new_size, reason))
            self.batch_size = new_size

    def after_step(self) -> int:
        """Read memory after a step and return the batch size for the next one."""
        if not self.cfg.enabled:
            return self.batch_size
        used = self.probe()
        if used > self.cfg.threshold:
            self.calm_steps = 0
            self._set(
                max(self.cfg.min_batch_size, self.batch_size // 2),
                f"memory use {used:.0%} above {self.cfg.threshold:.0%}",
            )
        elif used < self.cfg.low_threshold:
            self.calm_steps += 1
            if self.calm_steps >= self.cfg.grow_after_steps:
                self.calm_steps = 0
                self._set(min(self.ceiling, self.batch_size * 2), f"memory use {used:.0%} stayed low")
        else:
            self.calm_steps = 0
        return self.batch_size

    def on_out_of_memory(self) -> int:
        """Halve after an out-of-memory error; raises if the batch is already at its floor."""
        if self.batch_size <= self.cfg.min_batch_size or not self.cfg.enabled:
            raise MemoryError(f"out of memory even at batch size {self.batch_size}")
        self._set(max(self.cfg.min_batch_size, self.batch_size // 2), "out-of-memory error in a step")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.batch_size
