"""Request batching: texts of concurrent requests go through the model together, on one worker thread off the
event loop.

A batch starts as soon as the model is free. It takes the requests already queued (up to ``max_batch_size``
texts; a request is never split) and waits up to ``max_wait_s`` for more only while other requests are still being
received, so an idle server answers a lone request at once. The queue is bounded in texts: :meth:`admit` says
whether a request may join it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

BatchFn = Callable[[list[str]], list[Any]]  # texts -> one result per text, in order
BatchObserver = Callable[[int, float], None]  # texts in the batch, seconds it took


@dataclass
class Job:
    texts: list[str]
    future: asyncio.Future = field(repr=False)
    queued: bool = True  # its texts count in ``waiting_texts``


class QueueFull(Exception):
    """More texts are waiting than the queue holds."""


class MicroBatcher:
    def __init__(
        self, run_batch: BatchFn, max_batch_size: int, max_wait_s: float, max_queue: int, observe: BatchObserver
    ):
        self.run_batch, self.observe = run_batch, observe
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self.jobs: deque[Job] = deque()
        self.waiting_texts = 0  # in the queue, not yet in a batch
        self.arriving = 0  # requests being received (body read, checked) that will join the queue
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertcls-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bertcls-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def admit(self, count: int) -> None:
        """Raise :class:`QueueFull` when ``count`` more texts would not fit in the queue (an empty queue takes any
        request, so one larger than the queue is not refused forever)."""
        if self.waiting_texts and self.waiting_texts + count > self.max_queue:
            raise QueueFull

    def arrived(self) -> None:
        """A request that was being received is in the queue now, or was refused: a waiting batch looks again."""
        self.arriving -= 1
        self._wakeup.set()

    async def submit(self, texts: list[str]) -> list[Any]:
        """The results for ``texts``, computed in some batch; the model's exception if that batch failed."""
        self.admit(len(texts))
        job = Job(texts, asyncio.get_running_loop().create_future())
        job.future.add_done_callback(lambda _future: self._dequeue(job))  # a client that left frees its place
        self.jobs.append(job)
        self.waiting_texts += len(texts)
        self._wakeup.set()
        return await job.future

    def _dequeue(self, job: Job) -> None:
        if job.queued:
            job.queued = False
            self.waiting_texts -= len(job.texts)

    def _fits(self, batch: list[Job], size: int) -> bool:
        return bool(self.jobs) and (not batch or size + len(self.jobs[0].texts) <= self.max_batch_size)

    def _take(self, batch: list[Job], size: int) -> int:
        """Move queued jobs into ``batch`` while they fit (the first one always does); returns the batch's texts."""
        while self._fits(batch, size):
            job = self.jobs.popleft()
            self._dequeue(job)
            if job.future.done():  # the client went away while it waited
                continue
            batch.append(job)
            size += len(job.texts)
        return size

    async def _gather(self) -> list[Job]:
        batch: list[Job] = []
        size = self._take(batch, 0)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size and self.arriving > 0 and (left := deadline - time.monotonic()) > 0:
            if self.jobs:  # the next request does not fit: nothing more can join this batch
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=left)
            except asyncio.TimeoutError:  # not the built-in TimeoutError before Python 3.11
                break
            size = self._take(batch, size)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._gather()
            if not batch:
                continue
            texts = [text for job in batch for text in job.texts]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, texts)
            except Exception as exc:
                logger.exception("A batch of %d texts failed", len(texts))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.observe(len(texts), time.perf_counter() - started)
            offset = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(results[offset : offset + len(job.texts)])
                offset += len(job.texts)
