"""Window batching: every request's model windows in one queue per model, batched across requests.

One `Batcher` per model, three threads beside the event loop:
- the host thread preprocesses each request as it arrives (Call.prepare: tokenized windows, work limits
  checked) and postprocesses each as soon as its last window is back (Prepared.finish); the bulk thread does the
  same for long requests, the event loop itself for small ones (below);
- the model thread runs batches of windows (pipe.forward, the only engine call).
The worker task forms each batch from the windows waiting, request by request in turn (one window from each
request per round, so a request with thousands of windows interleaves with small ones instead of blocking them),
of near-equal length (within `LENGTH_SLACK` of the batch's first window: padding stays small) and equal
choices, up to `max_batch_size` windows and `Limits.max_batch_tokens` tokens as padded (a window longer than
that runs alone): two workers' batches of 16 QA windows of 128 tokens cost 10-17 % more per window than
batches of 8, their activations no longer in the caches. It never waits while the engine is idle, except up to
`max_delay` for requests still being preprocessed when the batch is not full. A request answered already (timed out,
cancelled, refused at shutdown) takes no further batches.
A small request skips the host thread: one of at most `INLINE_CHARS` characters (its inputs' and its
parameters', such as fill-mask's targets, together) is preprocessed on the event
loop, and one of at most `INLINE_WINDOWS` windows and `INLINE_ANSWERS` answers postprocessed there, since for
them the hop to the thread and back (and its GIL hand-offs) costs more than the work. A long request's stages
(over `BULK_CHARS` characters, over `BULK_WINDOWS` windows) run on a thread of their own, so the small
requests' stages never queue behind its seconds of tokenizing or decoding.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from runtime import Pipeline
from runtime.errors import is_failure

from .errors import ServingError
from .requests import Call, Limits, Prepared


class QueueFull(ServingError):
    """The model holds --max-queue requests already."""


LENGTH_SLACK = (1.25, 8)  # a batch's windows are at most 1.25x + 8 tokens the length of its first one
INLINE_CHARS = 2000  # ~0.2 ms of tokenizing: what the event loop may do itself between two other events
INLINE_WINDOWS, INLINE_ANSWERS = 2, 64
BULK_CHARS, BULK_WINDOWS = 20_000, 64


def finished_inline(prepared: Prepared) -> bool:
    """Whether the request's postprocessing is small enough to run on the event loop."""
    return len(prepared.windows) <= INLINE_WINDOWS and prepared.answers <= INLINE_ANSWERS


class Job:
    """One request in the queue: its prepared windows, which were sent, the outputs back so far."""

    __slots__ = ("prepared", "future", "sent", "outputs", "remaining")

    def __init__(self, prepared: Prepared, future: asyncio.Future):
        self.prepared, self.future = prepared, future
        self.sent = 0
        self.outputs: list[dict[str, np.ndarray] | None] = [None] * len(prepared.windows)
        self.remaining = len(prepared.windows)

    def next_window(self) -> dict[str, np.ndarray] | None:
        """The job's next window to send to the model, or None when all were sent."""
        windows = self.prepared.windows
        return windows[self.sent] if self.sent < len(windows) else None


def near(shape: tuple[int, ...], anchor: tuple[int, ...]) -> bool:
    """Same choices, lengths within LENGTH_SLACK of each other."""
    if shape[:-1] != anchor[:-1]:
        return False
    short, long = sorted((shape[-1], anchor[-1]))
    return long <= short * LENGTH_SLACK[0] + LENGTH_SLACK[1]


class Batcher:
    """Gathers one model's calls into batches of windows and runs them in a thread."""
    def __init__(
        self,
        pipe: Pipeline,
        *,
        max_batch_size: int = 8,
        max_delay: float = 0.005,
        max_queue: int = 256,
        limits: Limits | None = None,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
        on_depth: Callable[[int], None] = lambda depth: None,
    ):
        self.pipe = pipe
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.limits = limits or Limits()
        self.on_batch = on_batch
        self.on_depth = on_depth  # told each new depth (a gauge other worker processes' /metrics can read)
        self.host = ThreadPoolExecutor(max_workers=1, thread_name_prefix="albert-serve-host")
        self.bulk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="albert-serve-bulk")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="albert-serve-model")
        self.jobs: dict[Job, None] = {}  # requests with windows not yet sent, in arrival order
        self.turn = 0  # which request opens the next batch
        self.admitted = 0  # requests taken and not yet answered (preprocessing, queued, running, postprocessing)
        self.preparing = 0
        self.raw = 0  # raw tensor calls (KServe v2) waiting for or running on the model's thread
        self.running = 0  # functions running on the model's thread now
        self.wake: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batcher's worker task on the running loop."""
        self.wake = asyncio.Event()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self, timeout: float | None = None) -> None:
        """Answer every request taken (for at most `timeout` seconds), then stop the worker; a batch still
        running on the model's thread is left to finish on its own (thread_busy says so)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while (self.admitted or self.raw) and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0.01)
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self.host.shutdown(wait=False, cancel_futures=True)
        self.bulk.shutdown(wait=False, cancel_futures=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def thread_busy(self) -> bool:
        """Whether a batch is running in the model's thread now."""
        return self.running > 0

    @property
    def depth(self) -> int:
        """Requests taken and not yet answered, raw tensor calls included."""
        return self.admitted + self.raw

    def submit(self, call: Call) -> asyncio.Future:
        """The future of the call's answer; QueueFull when --max-queue requests are taken already. Cancelling
        the future (a timeout) drops the request's remaining windows."""
        if self.depth >= self.max_queue:
            raise QueueFull(f"the queue holds {self.max_queue} requests")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.admitted += 1
        self.on_depth(self.depth)
        future.add_done_callback(self._answered)
        if call.chars <= INLINE_CHARS:
            self._prepare_here(call, future)
        else:
            self.preparing += 1
            loop.create_task(self._prepare(call, future))
        return future

    def _answered(self, future: asyncio.Future) -> None:
        self.admitted -= 1
        self.on_depth(self.depth)
        if not future.cancelled():
            future.exception()  # retrieved: an answer nobody awaits any more logs nothing

    async def _prepare(self, call: Call, future: asyncio.Future) -> None:
        loop = asyncio.get_running_loop()
        try:
            thread = self.bulk if call.chars > BULK_CHARS else self.host
            prepared = await loop.run_in_executor(thread, call.prepare, self.pipe, self.limits)
        except BaseException as exc:  # tokenizers' Rust panics derive from BaseException only
            refuse(future, exc)
            return
        finally:
            self.preparing -= 1
            self.wake.set()
        self._queue(prepared, future)

    def _prepare_here(self, call: Call, future: asyncio.Future) -> None:
        try:
            prepared = call.prepare(self.pipe, self.limits)
        except BaseException as exc:
            refuse(future, exc)
            return
        self._queue(prepared, future)
        self.wake.set()

    def _queue(self, prepared: Prepared, future: asyncio.Future) -> None:
        if future.done():
            return
        job = Job(prepared, future)
        if not prepared.windows:
            self._finish(job)
        else:
            self.jobs[job] = None

    def run_raw(self, function: Callable, *args: Any) -> asyncio.Future:
        """Run on the model's thread, in turn with the batches, counted in the queue's depth (raw tensor calls)."""
        if self.depth >= self.max_queue:
            raise QueueFull(f"the queue holds {self.max_queue} requests")
        self.raw += 1
        self.on_depth(self.depth)
        future = asyncio.get_running_loop().run_in_executor(self.executor, self._counted, function, *args)

        def done(_):
            self.raw -= 1
            self.on_depth(self.depth)

        future.add_done_callback(done)
        return future

    def _counted(self, function: Callable, *args: Any) -> Any:
        self.running += 1
        try:
            return function(*args)
        finally:
            self.running -= 1

    def waiting_windows(self) -> int:
        """How many windows of the queued jobs are not yet sent to the model."""
        return sum(len(job.prepared.windows) - job.sent for job in self.jobs)

    def take(self) -> list[tuple[Job, int]]:
        """The next batch: (request, window index) pairs, one window per request per round, starting from the
        request whose turn it is, windows near the first one's length."""
        for job in [job for job in self.jobs if job.future.done() or job.next_window() is None]:
            del self.jobs[job]  # answered already (timed out, cancelled) or every window sent
        if not self.jobs:
            return []
        jobs = list(self.jobs)
        start = self.turn % len(jobs)
        order = jobs[start:] + jobs[:start]
        self.turn = start + 1
        anchor = order[0].next_window()["input_ids"].shape
        rows = int(np.prod(anchor[:-1]))  # multiple choice: choices per window
        batch: list[tuple[Job, int]] = []
        longest = 0
        added = True
        while added and len(batch) < self.max_batch_size:
            added = False
            for job in order:
                window = job.next_window()
                if window is None or not near(window["input_ids"].shape, anchor):
                    continue
                length = max(longest, window["input_ids"].shape[-1])
                if batch and (len(batch) + 1) * rows * length > self.limits.max_batch_tokens:
                    return batch
                batch.append((job, job.sent))
                job.sent += 1
                longest, added = length, True
                if len(batch) == self.max_batch_size:
                    break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.jobs:
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.preparing and self.max_delay > 0 and self.waiting_windows() < self.max_batch_size:
                deadline = loop.time() + self.max_delay  # requests about to bring windows: let them join
                while self.preparing and self.waiting_windows() < self.max_batch_size and loop.time() < deadline:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
            batch = self.take()
            if not batch:
                continue
            windows = [job.prepared.windows[index] for job, index in batch]
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.executor, self._counted, self.pipe.forward, windows,
                                                     len(windows))
            except Exception as exc:  # the worker outlives any batch; its requests get the model's error
                for job, _ in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.on_batch(len(batch), time.perf_counter() - started)
            for (job, index), output in zip(batch, outputs):
                job.outputs[index] = output
                job.remaining -= 1
                if job.remaining == 0 and not job.future.done():
                    self._finish(job)

    def _finish(self, job: Job) -> None:
        """Postprocess (on the loop when finished_inline, else on the host or the bulk thread); the answer or the
        error goes to the request's future."""
        if finished_inline(job.prepared):
            try:
                job.future.set_result(job.prepared.finish(self.pipe, job.outputs))
            except BaseException as exc:
                refuse(job.future, exc)
            return
        thread = self.bulk if len(job.prepared.windows) > BULK_WINDOWS else self.host
        running = asyncio.get_running_loop().run_in_executor(thread, job.prepared.finish, self.pipe, job.outputs)

        def deliver(done: asyncio.Future) -> None:
            if job.future.done():
                return
            if done.cancelled():
                job.future.cancel()
            elif done.exception() is not None:
                job.future.set_exception(done.exception())
            else:
                job.future.set_result(done.result())

        running.add_done_callback(deliver)


def refuse(future: asyncio.Future, exc: BaseException) -> None:
    """The request's answer is the error its stage raised; what is not a failure (a KeyboardInterrupt) goes on up."""
    if not is_failure(exc):
        raise exc
    if not future.done():
        future.set_exception(exc)


def answer_calls(pipe: Pipeline, calls: list[Call], limits: Limits | None = None) -> list[tuple[bool, Any]]:
    """(True, answer) or (False, exception) per call, in order, with one forward for every call's windows (Ray
    Serve's batches use this)."""
    answers: list[tuple[bool, Any] | None] = [None] * len(calls)
    prepared: dict[int, Prepared] = {}
    for index, call in enumerate(calls):
        try:
            prepared[index] = call.prepare(pipe, limits)
        except BaseException as exc:  # tokenizers' Rust panics derive from BaseException only
            if not is_failure(exc):
                raise
            answers[index] = (False, exc)
    windows = [window for p in prepared.values() for window in p.windows]
    try:
        outputs = pipe.forward(windows)
    except Exception as exc:
        return [answer or (False, exc) for answer in answers]
    start = 0
    for index, p in prepared.items():
        try:
            answers[index] = (True, p.finish(pipe, outputs[start:start + len(p.windows)]))
        except BaseException as exc:
            if not is_failure(exc):
                raise
            answers[index] = (False, exc)
        start += len(p.windows)
    return answers  # type: ignore[return-value]
