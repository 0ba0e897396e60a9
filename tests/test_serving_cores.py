"""Workers without --threads: a model runs on every CPU while the other workers are idle, on its share otherwise."""
from __future__ import annotations

import multiprocessing
import os
import time

import httpx
import numpy as np
import pytest

from runtime.arguments import cpu_count
from serving import cli, loadgen
from serving.cores import SETTLE_S, WIDE_MIN_MULTIPLY_ADDS, Neighbours, Widening, multiply_adds_per_token
from tests.test_serving import SEED, albert_serve, metric, same


MID_SIZE = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024)
LONG = SEED + " Leaves take in light and water, and their roots draw minerals from the soil around them." * 2


@pytest.fixture(scope="module")
def fill_mask(handmade_bundle):
    """A model big enough that a batch of one LONG text is worth two threads, and one SEED text is not."""
    return handmade_bundle("fill-mask", **MID_SIZE)


def tokens(pipe, text: str) -> int:
    return pipe.preprocess(text).windows[0]["input_ids"].size


class Recording:
    """An engine double: says which it is and records that it ran."""

    input_names = ["input_ids"]

    def __init__(self, name: str):
        self.name, self.runs = name, 0

    def infer(self, inputs):
        self.runs += 1
        return {"engine": np.array(self.name)}


def test_each_worker_sees_the_others_requests_across_fork():
    """The counts live in memory shared with the processes forked after it: a worker's report is what the others
    read, and a worker that has just answered its last request counts as busy for SETTLE_S more; its own count
    never makes it less idle."""
    neighbours = Neighbours(2)
    context = multiprocessing.get_context("fork")
    told, answered = context.Queue(), context.Queue()

    def other_worker():
        neighbours.join(1)
        for in_flight in (3, 0):
            neighbours.report(in_flight)
            told.put(in_flight)
            answered.get(timeout=30)
        told.put(neighbours.others_idle())

    child = context.Process(target=other_worker)
    child.start()
    neighbours.join(0)
    neighbours.report(5)
    assert told.get(timeout=30) == 3
    seen = [neighbours.others_idle()]
    before = time.monotonic()
    answered.put(None)
    assert told.get(timeout=30) == 0
    assert neighbours.counts[1] == 0 and before <= neighbours.idle_since[1] <= time.monotonic()
    time.sleep(max(0.0, neighbours.idle_since[1] + SETTLE_S - time.monotonic()) + 0.01)
    seen.append(neighbours.others_idle())
    answered.put(None)
    others_idle_from_the_child = told.get(timeout=30)
    child.join(30)
    assert seen == [False, True]
    assert others_idle_from_the_child is False  # worker 0 still reports 5
    assert child.exitcode == 0


def test_widening_runs_the_wide_engine_only_for_big_batches_while_the_others_are_idle():
    """The threshold is WIDE_MIN_MULTIPLY_ADDS over the encoder's multiply-adds per token, counted on the batch's
    rows x length (multiple-choice rows included)."""
    neighbours = Neighbours(3)
    neighbours.join(1)
    narrow, wide = Recording("narrow"), Recording("wide")
    config = dict(hidden_size=256, num_hidden_layers=6, intermediate_size=1024)
    per_token = 6 * (4 * 256 * 256 + 2 * 256 * 1024)
    assert multiply_adds_per_token(config) == per_token
    engine = Widening(narrow, wide, neighbours, config)
    assert engine.wide_tokens == -(-WIDE_MIN_MULTIPLY_ADDS // per_token) == 43
    told = []
    engine.on_wide = lambda: told.append(1)
    ran = []
    neighbours.idle_since[0] = time.monotonic()  # worker 0 answered its last request just now
    ran.append(str(engine.infer({"input_ids": np.zeros((1, 64), np.int64)})["engine"]))
    neighbours.idle_since[0] = time.monotonic() - SETTLE_S - 0.01
    for counts, shape in (([0, 4, 0], (1, 64)), ([0, 0, 1], (1, 64)), ([2, 0, 0], (1, 64)), ([0, 0, 0], (1, 64)),
                          ([0, 0, 0], (1, 42)), ([0, 0, 0], (1, 43)), ([0, 0, 0], (2, 2, 8)), ([0, 0, 0], (3, 2, 8))):
        neighbours.counts[:] = counts
        ran.append(str(engine.infer({"input_ids": np.zeros(shape, np.int64)})["engine"]))
    assert ran == ["narrow", "wide", "narrow", "narrow", "wide", "narrow", "wide", "narrow", "wide"]
    assert (wide.runs, narrow.runs, len(told)) == (4, 5, 4)
    assert engine.input_names is narrow.input_names


def test_small_models_are_held_twice_large_ones_once(fill_mask, monkeypatch):
    """load_pipelines with neighbours: the narrow engine on --threads, the wide one on every CPU; a model file over
    WIDE_MAX_BYTES (its external data counted) keeps one engine, as with --threads given."""
    args = cli.parser().parse_args([str(fill_mask), "--threads", "1"])
    pipe = cli.load_pipelines(args, Neighbours(2))["fill-mask"]
    assert isinstance(pipe.backend, Widening)
    threads = [engine.session.get_session_options().intra_op_num_threads
               for engine in (pipe.backend.narrow, pipe.backend.wide)]
    assert threads == [1, cpu_count()]
    assert same(pipe(SEED)) == same(cli.load_pipelines(args)["fill-mask"](SEED))
    assert pipe.bundle.external_data == frozenset()  # read once, by load_bundle's verification
    assert pipe.bundle.model_bytes == os.path.getsize(pipe.bundle.model_path)
    monkeypatch.setattr(cli, "WIDE_MAX_BYTES", pipe.bundle.model_bytes - 1)
    assert not isinstance(cli.load_pipelines(args, Neighbours(2))["fill-mask"].backend, Widening)


def test_openvino_models_widen_too(fill_mask):
    """--backend openvino: the wide engine is compiled on every CPU's threads (INFERENCE_NUM_THREADS), answers equal."""
    args = cli.parser().parse_args([str(fill_mask), "--threads", "1", "--backend", "openvino"])
    pipe = cli.load_pipelines(args, Neighbours(2))["fill-mask"]
    assert isinstance(pipe.backend, Widening)
    threads = [engine.compiled.get_property("INFERENCE_NUM_THREADS")
               for engine in (pipe.backend.narrow, pipe.backend.wide)]
    assert threads == [1, cpu_count()]
    assert same(pipe(LONG)) == same(cli.load_pipelines(args)["fill-mask"](LONG))


def test_one_client_gets_every_cpu_many_get_a_share_each(fill_mask):
    """--workers 2, no --threads: one client's LONG requests run wide (the other worker has none; counted in
    /metrics), its SEED ones narrow (too small a batch), 16 clients' mostly narrow; the answers are pipeline()'s
    either way. With --threads, never wide."""
    from runtime import pipeline

    pipe = pipeline(fill_mask)
    served = cli.load_pipelines(cli.parser().parse_args([str(fill_mask), "--threads", "1"]), Neighbours(2))
    assert tokens(pipe, SEED) < served["fill-mask"].backend.wide_tokens <= tokens(pipe, LONG) < 128
    expected = {text: same(pipe(text)) for text in (SEED, LONG)}
    url_of = "{}/models/fill-mask".format
    widens = cpu_count() > 1  # one CPU: each worker has all of it already

    def answered(url, texts, concurrency):
        answers = loadgen.run(url_of(url), [{"inputs": t} for t in texts], concurrency=concurrency, time_limit=60)
        assert [a.status for a in answers] == [200] * len(texts)
        assert [a.body for a in answers] == [expected[t] for t in texts]
        return metric(httpx.get(url + "/metrics").text, "albert_serve_wide_batches_total", model="fill-mask")

    with albert_serve(fill_mask, args=["--workers", "2"]) as (url, _):
        assert answered(url, [LONG, SEED] * 6, concurrency=1) == (6 if widens else 0)
        wide = answered(url, [LONG] * 96, concurrency=16)
        batches = metric(httpx.get(url + "/metrics").text, "albert_serve_batch_size_count", model="fill-mask")
        assert batches > 12 and (6 <= wide < batches - 6 if widens else wide == 0)
    with albert_serve(fill_mask, args=["--workers", "2", "--threads", "1"]) as (url, _):
        assert answered(url, [LONG] * 4, concurrency=1) == 0
