"""A bounded load generator: N concurrent clients send a fixed list of requests, then stop.

Bounded in count (each body is sent once) and in time (`time_limit` seconds for the whole run, after which
what is unanswered is cancelled and reported as status 0). Used by the tests (devtools/serve_bench.py has its own cheaper client).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Answer:
    """The server's answer to one body: its index, HTTP status (0 for none) and parsed body."""
    index: int
    status: int  # 0: no answer (connection failed, or the time limit was reached)
    body: Any
    seconds: float
    headers: dict[str, str]


async def send_all(url: str, bodies: list[Any], concurrency: int, time_limit: float = 60.0) -> list[Answer]:
    """POST every body to url as JSON, `concurrency` at a time; one Answer per body, in order."""
    answers: list[Answer | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        for index in pending:
            started = time.perf_counter()
            try:
                response = await http.post(url, json=bodies[index])
                body = response.json()
                answers[index] = Answer(index, response.status_code, body, time.perf_counter() - started,
                                        dict(response.headers))
            except (httpx.HTTPError, ValueError) as exc:
                answers[index] = Answer(index, 0, repr(exc), time.perf_counter() - started, {})

    async with httpx.AsyncClient(limits=limits, timeout=time_limit, trust_env=False) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(concurrency)]
        done, late = await asyncio.wait(tasks, timeout=time_limit)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [a or Answer(i, 0, "not answered within the time limit", time_limit, {}) for i, a in enumerate(answers)]


def run(url: str, bodies: list[Any], concurrency: int, time_limit: float = 60.0) -> list[Answer]:
    """The answers to `bodies` posted to `url` with at most `concurrency` requests in flight."""
    return asyncio.run(send_all(url, bodies, concurrency, time_limit))
