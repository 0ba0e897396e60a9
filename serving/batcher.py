"""Dynamic batching: concurrent requests for one model are queued and answered together.

One `Batcher` per model: an asyncio queue of calls (a request's inputs and parameters) and one worker task
that takes the first waiting call, waits up to `max_delay` for more (up to `max_batch_size` inputs), and runs
the batch on the pipeline in the model's own thread, so the event loop keeps accepting requests meanwhile.
Single inputs with equal parameters share one `Pipeline.run_each`; a list input is one `pipeline(list)` call
(its result shapes are the pipeline's own). A batch that fails is retried call by call, so one bad request
gets its own error and nothing else is affected.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from runtime import Pipeline
from runtime.errors import is_failure

from .errors import ServingError
from .requests import Call


class QueueFull(ServingError):
    """The model's queue holds --max-queue calls already."""


class Batcher:
    def __init__(
        self,
        pipe: Pipeline,
        *,
        max_batch_size: int = 8,
        max_delay: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
    ):
        self.pipe = pipe
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.queue: asyncio.Queue[Call] = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="albert-serve-model")
        self.worker: asyncio.Task | None = None
        self.busy = 0  # calls taken from the queue and not yet answered
        self.next_call: Call | None = None  # taken from the queue, first of the next batch
        self.raw = 0  # raw tensor calls (KServe v2) waiting for or running on the model's thread
        self.running = 0  # functions running on the model's thread now

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self, timeout: float | None = None) -> None:
        """Answer every call already queued (for at most `timeout` seconds), then stop the worker; a batch still
        running on the model's thread is left to finish on its own (thread_busy says so)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while (not self.queue.empty() or self.busy or self.next_call is not None or self.raw) and (
            deadline is None or loop.time() < deadline
        ):
            await asyncio.sleep(0.01)
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def thread_busy(self) -> bool:
        return self.running > 0

    @property
    def depth(self) -> int:
        return self.queue.qsize() + (self.next_call is not None) + self.raw

    def submit(self, call: Call) -> asyncio.Future:
        call.future = asyncio.get_running_loop().create_future()
        if self.depth >= self.queue.maxsize:
            raise QueueFull(f"the queue holds {self.queue.maxsize} requests")
        self.queue.put_nowait(call)
        return call.future

    def run_raw(self, function: Callable, *args: Any) -> asyncio.Future:
        """Run on the model's thread, in turn with the batches, counted in the queue's depth (raw tensor calls)."""
        if self.depth >= self.queue.maxsize:
            raise QueueFull(f"the queue holds {self.queue.maxsize} requests")
        self.raw += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, self._counted, function, *args)

        def done(_):
            self.raw -= 1

        future.add_done_callback(done)
        return future

    def _counted(self, function: Callable, *args: Any) -> Any:
        self.running += 1
        try:
            return function(*args)
        finally:
            self.running -= 1

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [self.next_call or await self.queue.get()]
            self.next_call = None
            self.busy = 1
            deadline = loop.time() + self.max_delay
            size = batch[0].size
            while size < self.max_batch_size:
                try:
                    call = self.queue.get_nowait() if loop.time() >= deadline else await asyncio.wait_for(
                        self.queue.get(), deadline - loop.time()
                    )
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + call.size > self.max_batch_size:  # a list that does not fit opens the next batch
                    self.next_call = call
                    break
                batch.append(call)
                size += call.size
            self.busy = len(batch)
            batch = [call for call in batch if not call.future.done()]  # timed out while waiting
            if batch:
                started = time.perf_counter()
                try:
                    answers = await loop.run_in_executor(self.executor, self._counted, answer_calls, self.pipe, batch)
                except Exception as exc:  # the worker itself must outlive any batch
                    answers = [(False, exc)] * len(batch)
                self.on_batch(sum(call.size for call in batch), time.perf_counter() - started)
                for call, (ok, value) in zip(batch, answers):
                    if call.future.done():
                        continue
                    if ok:
                        call.future.set_result(value)
                    else:
                        call.future.set_exception(value)
            self.busy = 0


def answer_calls(pipe: Pipeline, calls: list[Call]) -> list[tuple[bool, Any]]:
    """(True, result) or (False, exception) per call, in order; runs on the model's thread."""
    answers: list[tuple[bool, Any] | None] = [None] * len(calls)
    groups: dict[str | None, list[int]] = {}
    for index, call in enumerate(calls):
        groups.setdefault(call.group, []).append(index)
    for group, indices in groups.items():
        if group is not None and len(indices) > 1:
            try:
                results = pipe.run_each([calls[i].inputs for i in indices], **calls[indices[0]].params)
            except BaseException as exc:  # someone's input is bad: answer each call alone below, to name the one
                if not is_failure(exc):
                    raise
            else:
                for index, result in zip(indices, results):
                    answers[index] = (True, result)
                continue
        for index in indices:
            try:
                answers[index] = (True, calls[index].answer(pipe))
            except BaseException as exc:  # tokenizers' Rust panics derive from BaseException only
                if not is_failure(exc):
                    raise
                answers[index] = (False, exc)
    return answers  # type: ignore[return-value]
