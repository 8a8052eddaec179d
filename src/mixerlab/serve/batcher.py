"""Dynamic batching: requests that arrive within a few milliseconds of each other run as one batch.

A Mixer runs many more images per second at batch 32 than at batch 1 on a CPU, so the server groups
what arrives: the first request of a batch waits at most `max_wait_ms` for others, up to `max_batch`
images. The model runs on one worker thread, off the event loop, so the server keeps accepting and
rejecting requests while it computes. A full queue is refused at once (the server sheds load instead
of falling over), and a request whose client gave up is dropped from its batch's results. When a batch
fails, each of its images runs again alone, so one bad image fails only its own request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch


class QueueFull(Exception):
    """The queue holds `max_queue` images already."""


class ModelFailure(Exception):
    """The model raised on this image (alone, after its batch failed)."""

    def __init__(self, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {str(cause).strip()[:300]}")
        self.cause = cause


@dataclass
class Result:
    probs: torch.Tensor
    batch_size: int
    queued_s: float


class Batcher:
    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixerlab-model")
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the event loop its task runs on
        self.busy = False  # a batch is on the worker thread

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._loop())

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def submit(self, image: torch.Tensor) -> Result:
        """Queue one image (C, H, W) and wait for its class probabilities."""
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((image, fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFull from None
        return await fut

    async def _collect(self) -> list:
        items = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(items) < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            self.busy = True
            try:
                await self._run_batch(loop, [it for it in items if not it[1].done()])  # skip clients gone
            finally:
                self.busy = False

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, items: list) -> None:
        if not items:
            return
        t = time.perf_counter()
        try:
            probs = await loop.run_in_executor(self.executor, self.run, torch.stack([it[0] for it in items]))
        except Exception as e:
            if len(items) == 1:
                if not items[0][1].done():
                    items[0][1].set_exception(ModelFailure(e))
                return
            # One image may be what broke the batch: run each alone, so only the guilty request fails.
            for item in items:
                await self._run_batch(loop, [item])
            return
        self.on_batch(len(items), time.perf_counter() - t)
        for i, (_, fut, queued) in enumerate(items):
            if not fut.done():
                fut.set_result(Result(probs[i], len(items), t - queued))

    async def drain(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop (graceful shutdown)."""
        deadline = time.perf_counter() + timeout
        while (self.queue.qsize() or self.busy) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)
