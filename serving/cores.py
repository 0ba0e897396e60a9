"""--workers N without --threads: each worker's models run on its share of the CPUs while the others have work,
and on every CPU while they have none.

onnxruntime and OpenVINO fix a model's intra-op threads when they load it, so a worker holds each model twice:
`Widening` runs a batch on the wide engine (every CPU) when no other worker has had requests in flight for
`SETTLE_S` and the batch is worth splitting (`WIDE_MIN_MULTIPLY_ADDS`), on the narrow one (CPUs / N threads)
otherwise. Under load every worker has requests, so each keeps to its share of the cores (more threads per process
than cores costs 10-20 % of the throughput); one client alone gets every core, as an in-process call does. Which
workers have requests is `Neighbours`: a count per worker in memory the parent maps before it forks them, written by
its own worker only.
"""
from __future__ import annotations

import ctypes
import time
from multiprocessing.sharedctypes import RawArray
from typing import Any, Callable

import numpy as np

WIDE_MAX_BYTES = 512 << 20  # a model file above this is held once: a second copy of its weights costs too much memory
# a smaller batch runs no faster on 2 threads than on 1 (a Xeon, 2 CPUs: the embedded model's QA 1x128 tokens 0.96x,
# 4x128 1.23x; the mid-size model's 1x32 0.95x, 1x64 1.16x; both cross over near 200 M multiply-adds)
WIDE_MIN_MULTIPLY_ADDS = 200_000_000
# under load a worker's requests leave gaps of a few ms between them; another worker widening into one of them would
# overlap the next request's batch (mid-size QA at 8 and 32 clients: 6-13 % fewer requests a second without this)
SETTLE_S = 0.1


def multiply_adds_per_token(config: dict) -> int:
    """The encoder's multiply-adds per token from config.json's sizes: per layer, the attention's four projections
    (4 h^2) and the feed-forward's two (2 h i); the heads and the attention scores are small beside them."""
    hidden, layers = config.get("hidden_size", 768), config.get("num_hidden_layers", 12)
    intermediate = config.get("intermediate_size", 4 * hidden)
    return max(1, layers * (4 * hidden * hidden + 2 * hidden * intermediate))


class Neighbours:
    """Requests in flight per worker process, and since when each has had none (time.monotonic: one clock for
    every process); made before the workers fork, each then `joins` as its index."""

    def __init__(self, workers: int):
        self.counts = RawArray(ctypes.c_long, workers)
        self.idle_since = RawArray(ctypes.c_double, workers)
        self.index = 0

    def join(self, index: int) -> None:
        """This process is worker `index`."""
        self.index = index

    def report(self, in_flight: int) -> None:
        """This worker has `in_flight` requests now."""
        if in_flight == 0 and self.counts[self.index]:
            self.idle_since[self.index] = time.monotonic()
        self.counts[self.index] = in_flight

    def others_idle(self) -> bool:
        """Whether every other worker has had no request in flight for SETTLE_S at least."""
        settled = time.monotonic() - SETTLE_S
        return not any(self.counts[index] or self.idle_since[index] > settled
                       for index in range(len(self.counts)) if index != self.index)


class Widening:
    """An engine that runs a batch of at least WIDE_MIN_MULTIPLY_ADDS on `wide` while the other workers are idle,
    every other on `narrow`; everything else (names, feed checks) is the narrow engine's. Both run only on the
    batcher's one model thread."""

    def __init__(self, narrow: Any, wide: Any, neighbours: Neighbours, config: dict):
        self.narrow, self.wide, self.neighbours = narrow, wide, neighbours
        self.wide_tokens = -(-WIDE_MIN_MULTIPLY_ADDS // multiply_adds_per_token(config))  # tokens, rows x length
        self.on_wide: Callable[[], None] = lambda: None  # told of each batch run on the wide engine

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch's outputs, from the engine its size and the other workers' load call for."""
        if np.size(inputs.get("input_ids", ())) >= self.wide_tokens and self.neighbours.others_idle():
            self.on_wide()
            return self.wide.infer(inputs)
        return self.narrow.infer(inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.narrow, name)
